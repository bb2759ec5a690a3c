"""The web service: JSON API, upload intake, pages, health and metrics."""
