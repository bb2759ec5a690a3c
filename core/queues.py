"""Enqueueing pipeline steps onto their arq queues.

The job id is ``<step>:<submission_id>``: arq refuses a second job with the
same id while the first exists, which makes enqueueing idempotent.
"""

from __future__ import annotations

from datetime import timedelta

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Job

from core import keys


def redis_settings(url: str) -> RedisSettings:
    return RedisSettings.from_dsn(url)


async def connect(url: str) -> ArqRedis:
    return await create_pool(redis_settings(url))


def connect_lazily(url: str) -> ArqRedis:
    """A pool that connects on first use: a process can start while Redis is
    down (the api then reports not-ready, and still takes uploads: their steps
    stay "queued" in the database until the reconciler finds Redis back)."""
    pool: ArqRedis = ArqRedis.from_url(url, socket_connect_timeout=2)
    return pool


async def enqueue_step(
    redis: ArqRedis, step: str, submission_id: int, *, defer_seconds: float | None = None
) -> Job | None:
    """Queue one pipeline step; None if that job is already queued or running."""
    return await redis.enqueue_job(
        step,
        submission_id,
        _job_id=keys.job_id(step, submission_id),
        _queue_name=keys.queue_name(step),
        _defer_by=timedelta(seconds=defer_seconds) if defer_seconds else None,
    )


async def job_exists(redis: ArqRedis, step: str, submission_id: int) -> bool:
    """Whether the step's job is queued, deferred or running right now."""
    job = Job(keys.job_id(step, submission_id), redis, _queue_name=keys.queue_name(step))
    status = await job.status()
    return status.value in ("deferred", "queued", "in_progress")
