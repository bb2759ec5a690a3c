"""The maintenance worker: periodic and deferred housekeeping on its own queue.

`handin worker maintenance` runs the reconciler every
``HANDIN_WORKER__RECONCILE_INTERVAL_SECONDS`` (and once at start-up) through
an arq cron job. arq's cron jobs get a unique job id per run time, so any
number of maintenance replicas run each pass once. Other housekeeping jobs
(e.g. a deferred grade release) are added to ``functions()`` below and enqueued
onto ``keys.queue_name(keys.MAINTENANCE_TASK)``.
"""

from __future__ import annotations

from typing import Any

from arq import cron, func
from arq.cron import CronJob
from arq.worker import Function

from core import keys
from core.grades import release_grades_job
from core.settings import Settings, get_settings
from workers.base import worker_settings
from workers.reconcile import reconcile


async def reconcile_job(ctx: dict[str, Any]) -> dict[str, Any]:
    """One reconciler pass, with the worker's own database and Redis connections."""
    report = await reconcile(ctx["sessions"], ctx["redis"], ctx["settings"])
    return report.as_dict()


def cron_schedule(interval_seconds: float) -> dict[str, set[int]]:
    """arq cron fields for "every N seconds": N below a minute ticks on seconds, above it on minutes."""
    interval = max(1, round(interval_seconds))
    if interval < 60:
        return {"second": set(range(0, 60, interval))}
    minutes = max(1, min(59, round(interval / 60)))
    return {"minute": set(range(0, 60, minutes)), "second": {0}}


def cron_jobs(settings: Settings) -> list[CronJob]:
    policy = settings.retry_policy("reconcile")
    return [
        cron(
            reconcile_job,
            name="reconcile",
            run_at_startup=True,
            timeout=policy.timeout_seconds,
            max_tries=1,  # the next pass is the retry
            **cron_schedule(settings.worker.reconcile_interval_seconds),  # type: ignore[arg-type]
        )
    ]


def functions(settings: Settings) -> list[Function]:
    """Jobs enqueued onto the maintenance queue by others; add new ones here."""
    policy = settings.retry_policy("reconcile")
    return [
        func(reconcile_job, name="reconcile_now", timeout=policy.timeout_seconds, max_tries=1),
        func(release_grades_job, name=keys.RELEASE_GRADES_FUNCTION, timeout=300, max_tries=3),
    ]


def maintenance_worker_settings(settings: Settings | None = None) -> type:
    settings = settings or get_settings()
    return worker_settings(keys.MAINTENANCE_TASK, functions(settings), settings, cron_jobs(settings))


WorkerSettings = maintenance_worker_settings()
