"""Enqueueing pipeline steps onto their arq queues.

The job id is ``<step>:<submission_id>``: arq refuses a second job with the
same id while the first exists, which makes enqueueing idempotent.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from contextvars import ContextVar
from typing import NamedTuple

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import job_key_prefix, result_key_prefix
from arq.jobs import Job, serialize_job
from arq.utils import timestamp_ms
from redis.asyncio.client import Pipeline
from redis.commands.core import AsyncScript

from core import keys
from core.events import Envelope, publish, publishing_turn, queue_publishes

# arq's enqueue_job in one round trip instead of three (WATCH, EXISTS, MULTI/EXEC): the same keys,
# job encoding, score and expiry, and the same refusal of a job id whose job or result still exists.
# KEYS: job, result, queue, wake list; ARGV: expiry ms, job, score, job id, 1 if due now, tokens kept.
# Answers 1 if queued, 0 if not.
# A job due now also leaves a token on the queue's wake list (KEYS[4]), which a worker waiting for
# work pops (HandinWorker): at most WAKE_TOKENS_KEPT, so a queue nobody serves costs nothing more.
_ENQUEUE_SOURCE = b"""
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then return 0 end
redis.call('PSETEX', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] == '1' then
  redis.call('LPUSH', KEYS[4], 1)
  redis.call('LTRIM', KEYS[4], 0, tonumber(ARGV[6]) - 1)
end
return 1
"""
ENQUEUE_JOB = AsyncScript(None, _ENQUEUE_SOURCE)  # type: ignore[arg-type]  # the client is given per call
_ENQUEUE_TEXT = _ENQUEUE_SOURCE.decode()  # for EVAL in a pipeline


# Tokens a queue's wake list keeps: a burst of jobs wakes up to this many waiting workers at once;
# more jobs than that are found by the workers' polls while they have work.
WAKE_TOKENS_KEPT = 64


async def wake_workers(redis: ArqRedis, task: str) -> None:
    """Tell a waiting worker of `task` that a job queued by arq's own enqueue_job is due now."""
    wake = keys.wake_list(keys.queue_name(task))
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(wake, 1)
        pipe.ltrim(wake, 0, WAKE_TOKENS_KEPT - 1)
        await pipe.execute()


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


def _enqueue_arguments(
    redis: ArqRedis, step: str, submission_id: int, defer_seconds: float | None = None
) -> tuple[list[str], list[bytes | str | int]]:
    """ENQUEUE_JOB's keys and arguments for one step's job."""
    job_id = keys.job_id(step, submission_id)
    enqueued_ms = timestamp_ms()
    defer_ms = round(defer_seconds * 1000) if defer_seconds else 0
    job = serialize_job(step, (submission_id,), {}, None, enqueued_ms, serializer=redis.job_serializer)
    queue = keys.queue_name(step)
    return (
        [job_key_prefix + job_id, result_key_prefix + job_id, queue, keys.wake_list(queue)],
        [
            defer_ms + redis.expires_extra_ms,
            job,
            enqueued_ms + defer_ms,
            job_id,
            0 if defer_ms else 1,
            WAKE_TOKENS_KEPT,
        ],
    )


async def enqueue_step(
    redis: ArqRedis, step: str, submission_id: int, *, defer_seconds: float | None = None
) -> Job | None:
    """Queue one pipeline step; None if that job is already queued or running."""
    script_keys, args = _enqueue_arguments(redis, step, submission_id, defer_seconds)
    if not await ENQUEUE_JOB(keys=script_keys, args=args, client=redis):
        return None
    job_id = keys.job_id(step, submission_id)
    return Job(job_id, redis=redis, _queue_name=keys.queue_name(step), _deserializer=redis.job_deserializer)


async def publish_and_enqueue(
    redis: ArqRedis, envelopes: Sequence[Envelope], steps: Sequence[str], submission_id: int
) -> None:
    """Publish committed events, then queue the steps they made ready, in one round trip.

    What ending a step does after its commit. Without steps to queue this is
    core.events.publish (never raises); with some, a Redis failure raises, as
    enqueue_step does: the steps stay "queued" in the database for the
    reconciler, and the events are in the audit trail. Shielded, as publish is.
    """
    if not steps:
        await publish(redis, list(envelopes))
        return
    await asyncio.shield(_publish_and_enqueue(redis, envelopes, steps, submission_id))


async def _publish_and_enqueue(
    redis: ArqRedis, envelopes: Sequence[Envelope], steps: Sequence[str], submission_id: int
) -> None:
    async with publishing_turn() as first, redis.pipeline(transaction=False) as pipe:
        queue_delivery(pipe, redis, Delivery((*first, *envelopes), tuple(steps), submission_id))
        await pipe.execute()


class Delivery(NamedTuple):
    """What ending a step sends to Redis after its commit: its events, and the steps it made ready."""

    envelopes: tuple[Envelope, ...]
    steps: tuple[str, ...]
    submission_id: int


def queue_delivery(pipe: Pipeline, redis: ArqRedis, delivery: Delivery) -> None:
    """Add ``delivery``'s PUBLISHes and enqueue scripts to ``pipe``."""
    queue_publishes(pipe, delivery.envelopes)
    for step in delivery.steps:
        script_keys, args = _enqueue_arguments(redis, step, delivery.submission_id)
        # EVAL, not EVALSHA: a pipeline cannot load a script Redis lost (a restart) and
        # retry; Redis caches the compiled script by its digest either way.
        pipe.eval(_ENQUEUE_TEXT, len(script_keys), *script_keys, *args)  # type: ignore[arg-type]  # bytes too


# Set by a worker around each job (workers.run.HandinWorker): a step's end, the job's last act,
# is sent in the MULTI/EXEC that finishes the job instead of a round trip of its own. A worker that
# stops between the commit and that EXEC loses the publish and the enqueue as a worker killed
# between the commit and the publish always has: the events are in the database and the
# reconciler queues the steps left "queued".
CARRIED_TO_FINISH: ContextVar[list[Delivery] | None] = ContextVar("carried_to_finish", default=None)


async def job_exists(redis: ArqRedis, step: str, submission_id: int) -> bool:
    """Whether the step's job is queued, deferred or running right now."""
    job = Job(keys.job_id(step, submission_id), redis, _queue_name=keys.queue_name(step))
    status = await job.status()
    return status.value in ("deferred", "queued", "in_progress")
