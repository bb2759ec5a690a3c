"""`handin worker <task>`: run one task's arq worker in this process."""

from __future__ import annotations

import importlib
import logging

from arq.worker import create_worker
from prometheus_client import start_http_server

from core import keys
from core.logs import configure_logging
from core.settings import get_settings

log = logging.getLogger(__name__)

WORKER_TASKS = (*keys.TASKS, keys.MAINTENANCE_TASK)


def load_worker_settings(task: str) -> type:
    if task not in WORKER_TASKS:
        raise SystemExit(f"unknown task {task!r}; choose one of: {', '.join(WORKER_TASKS)}")
    module = importlib.import_module(f"workers.{task}")
    settings_cls: type = module.WorkerSettings
    return settings_cls


def run_worker(task: str, burst: bool = False) -> None:
    configure_logging()
    settings_cls = load_worker_settings(task)
    port = get_settings().worker.http_port
    if port and not burst:
        # Liveness and Prometheus scrape both hit this listener. Several workers
        # on one machine (the local autoscaler backend) share a port: the first wins.
        try:
            start_http_server(port)
        except OSError as error:
            log.info("metrics port taken; serving none", extra={"port": port, "error": str(error)})
    worker = create_worker(settings_cls, burst=burst)
    log.info("starting worker", extra={"task": task, "queue": keys.queue_name(task), "burst": burst})
    worker.run()
