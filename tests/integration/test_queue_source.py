"""The autoscaler's queue reading agrees with arq about which jobs are due."""

from __future__ import annotations

from redis.asyncio import Redis

from autoscaler.sources import QueueSource
from core import keys


async def test_a_job_enqueued_just_before_the_reading_is_ready_not_deferred(redis: Redis) -> None:
    # arq scores a job round(time() * 1000); a job enqueued 0.3 ms before the reading has a score
    # one above the reading's truncated millisecond. It is due: arq's own poll would take it.
    now = 1000.0009
    await redis.zadd(keys.queue_name("scan"), {"scan:1": round((now - 0.0003) * 1000)})
    depth = (await QueueSource(redis, ["scan"]).read(now, lead=60))["scan"]
    assert (depth.ready, depth.deferred) == (1, 0)
