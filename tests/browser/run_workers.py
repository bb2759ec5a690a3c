"""Every worker pool of the pipeline (and maintenance) in one process, for browser tests.

Started by tests/fixtures/system.py as a subprocess; settings come from the
``HANDIN_*`` environment that fixture sets. One process instead of seven
keeps the browser suite's start-up short on a small machine.
"""

from __future__ import annotations

import asyncio

from arq.worker import get_kwargs

from core.logs import configure_logging
from workers.run import WORKER_TASKS, HandinWorker, load_worker_settings


async def main() -> None:
    configure_logging()
    # Signals end the process as a whole; arq's own handlers would fight over SIGTERM.
    workers = [
        HandinWorker(**{**get_kwargs(load_worker_settings(task)), "handle_signals": False}) for task in WORKER_TASKS
    ]
    await asyncio.gather(*(worker.async_run() for worker in workers))


if __name__ == "__main__":
    asyncio.run(main())
