"""The maintenance worker: periodic and deferred housekeeping on its own queue.

`handin worker maintenance` runs the reconciler every
``HANDIN_WORKER__RECONCILE_INTERVAL_SECONDS`` (and once at start-up) through
an arq cron job. arq's cron jobs get a unique job id per run time, so any
number of maintenance replicas run each pass once. Once an hour it prunes
class chat messages older than ``HANDIN_CHAT__RETENTION_DAYS``; staff announcements stay pinned
for the life of the course (core.chat.PRUNED_TYPES). With each reconcile pass it
removes resumable uploads past their ``Upload-Expires`` (core.uploads). Other housekeeping jobs
(e.g. a deferred grade release) are added to ``functions()`` below and enqueued
onto ``keys.queue_name(keys.MAINTENANCE_TASK)``.
"""

from __future__ import annotations

from typing import Any

from arq import cron, func
from arq.cron import CronJob
from arq.worker import Function

from core import keys
from core.chat import prune_messages
from core.db import transaction
from core.grades import release_grades_job
from core.settings import Settings, get_settings
from core.uploads import expire_uploads
from workers.base import worker_settings
from workers.reconcile import reconcile


async def reconcile_job(ctx: dict[str, Any]) -> dict[str, Any]:
    """One reconciler pass, with the worker's own database and Redis connections."""
    report = await reconcile(ctx["sessions"], ctx["redis"], ctx["settings"])
    return report.as_dict()


async def prune_chat_job(ctx: dict[str, Any]) -> int:
    """Class chat is kept for the retention period only (announcements are kept); returns how many went."""
    settings: Settings = ctx["settings"]
    async with transaction(ctx["sessions"]) as session:
        return await prune_messages(session, settings.chat.retention_days)


async def expire_uploads_job(ctx: dict[str, Any]) -> int:
    """Abandoned resumable uploads: their partial bytes and rows go once expired; returns how many."""
    return await expire_uploads(ctx["sessions"], ctx["storage"])


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
        ),
        cron(
            expire_uploads_job,
            name="expire_uploads",
            run_at_startup=True,
            timeout=300,
            max_tries=1,
            **cron_schedule(settings.worker.reconcile_interval_seconds),  # type: ignore[arg-type]
        ),
        cron(prune_chat_job, name="prune_chat", run_at_startup=True, timeout=300, max_tries=1, minute={17}, second={0}),
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
