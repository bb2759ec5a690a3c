"""What every worker process shares: its arq settings, start-up and counters.

arq reads only a settings class's *own* attributes, so `worker_settings()`
builds a fresh class per task with every attribute written onto it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from arq import func
from arq.connections import ArqRedis
from arq.cron import CronJob
from arq.worker import Function

from core import keys
from core.db import make_engine, make_sessionmaker
from core.pipeline import STEPS_BY_NAME
from core.queues import redis_settings
from core.settings import Settings, get_settings
from workers.runner import Handler, run_step

log = logging.getLogger(__name__)

# A killed worker's job is retried by arq too: leave room above our own max_tries.
ARQ_EXTRA_TRIES = 5


async def startup(ctx: dict[str, Any]) -> None:
    from core.storage import make_storage

    settings: Settings = ctx.setdefault("settings", get_settings())
    ctx["engine"] = make_engine(settings.database_url)
    ctx["sessions"] = make_sessionmaker(ctx["engine"])
    ctx["storage"] = make_storage(settings)
    log.info("worker started", extra={"queue": ctx.get("queue_name")})


async def shutdown(ctx: dict[str, Any]) -> None:
    storage = ctx.get("storage")
    if storage is not None:
        await storage.close()
    engine = ctx.get("engine")
    if engine is not None:
        await engine.dispose()


async def count_finished_job(ctx: dict[str, Any]) -> None:
    """Feeds the autoscaler's measured drain rate per pool."""
    task = ctx.get("task")
    redis: ArqRedis | None = ctx.get("redis")
    if task and redis is not None:
        await redis.incr(keys.completed_counter(task))


def step_function(task: str, handler: Handler, settings: Settings) -> Function:
    policy = settings.retry_policy(task)

    async def job(ctx: dict[str, Any], submission_id: int) -> str:
        return await run_step(ctx, task, submission_id, handler)

    # arq's own timeout backs up the runner's: the runner times out first and retries.
    timeout = policy.timeout_seconds + settings.worker.job_timeout_margin_seconds
    return func(job, name=task, timeout=timeout, max_tries=policy.max_tries + ARQ_EXTRA_TRIES)


def worker_settings(
    task: str,
    functions: Sequence[Function],
    settings: Settings | None = None,
    cron_jobs: Sequence[CronJob] = (),
) -> type:
    """The arq settings class for one task's worker pool."""
    settings = settings or get_settings()
    section = settings.worker
    attributes: dict[str, Any] = {
        "functions": list(functions),
        "cron_jobs": list(cron_jobs),
        "queue_name": keys.queue_name(task),
        "redis_settings": redis_settings(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "after_job_end": count_finished_job,
        "ctx": {"settings": settings, "task": task},
        "max_jobs": section.max_jobs,
        "poll_delay": section.poll_delay_seconds,
        "queue_read_limit": max(section.queue_read_limit, section.max_jobs),
        "job_completion_wait": int(section.job_completion_wait_seconds),
        "keep_result": 0,
        "health_check_key": keys.worker_heartbeat(task),
        "health_check_interval": 10,
    }
    profile = STEPS_BY_NAME[task].profile if task in STEPS_BY_NAME else "io"
    attributes["profile"] = profile
    return type(f"{task.title()}WorkerSettings", (), attributes)


def step_worker_settings(task: str, handler: Handler, settings: Settings | None = None) -> type:
    settings = settings or get_settings()
    return worker_settings(task, [step_function(task, handler, settings)], settings)

