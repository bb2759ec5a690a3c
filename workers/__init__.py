"""One module per pipeline task, each with its own arq queue and WorkerSettings."""
