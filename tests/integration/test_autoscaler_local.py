"""The local backend for real: `handin worker receipt` processes started, drained and stopped.

Real PostgreSQL, real Redis, real worker subprocesses doing real receipt
steps (written to the outbox directory); nothing is faked.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.main import Autoscaler, pool_limits
from autoscaler.policy import decide
from autoscaler.targets import LocalTarget
from core import keys
from core.models import SubmissionStep
from core.queues import connect, enqueue_step
from core.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.fixtures.factories import Factory
from tests.services import settings_env

# Several worker processes writing at once: PostgreSQL only (SQLite serialises writers).
pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

JOBS = 40


def worker_env(settings: Settings) -> dict[str, str]:
    """The test's settings, passed to the worker processes the way the chart would: environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDIN_")}
    env.update(settings_env(settings))
    env.update(
        {
            "HANDIN_WORKER__HTTP_PORT": "0",
            "HANDIN_WORKER__JOB_COMPLETION_WAIT_SECONDS": "10",
            "HANDIN_LOG_LEVEL": "WARNING",
        }
    )
    return env


async def queue_receipts(factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: ArqRedis) -> list[int]:
    """Submissions as the store step leaves them, each with its receipt job queued."""
    world = await factory.world()
    ids = [(await factory.submission(world, f"essay {n}\n".encode() * 50)).id for n in range(JOBS)]
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id.in_(ids), SubmissionStep.step.in_(["scan", "store"]))
            .values(state="succeeded")
        )
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id.in_(ids), SubmissionStep.step == "receipt")
            .values(state="queued")
        )
    for submission_id in ids:
        await enqueue_step(redis, "receipt", submission_id)
    return ids


async def test_workers_appear_for_a_flood_drain_it_and_stop_after_the_window(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], settings: Settings, redis: Redis
) -> None:
    arq_redis = await connect(TEST_REDIS_URL)
    ids = await queue_receipts(factory, sessions, arq_redis)
    settings = settings.model_copy(
        update={
            "autoscaler": settings.autoscaler.model_copy(
                update={
                    "scale_down_window_seconds": 2.0,
                    "pools": settings.autoscaler.pools.model_copy(
                        update={
                            "receipt": settings.autoscaler.pools.receipt.model_copy(
                                update={"min_replicas": 0, "max_replicas": 3, "target_wait_seconds": 0.5}
                            )
                        }
                    ),
                }
            )
        }
    )
    target = LocalTarget(env=worker_env(settings), stop_timeout=30, cwd=str(Path(__file__).parents[2]))
    scaler = Autoscaler(settings, redis, None, target, tasks=["receipt"])
    peak, started = 0, set()
    try:
        async with asyncio.timeout(90):
            # Flood: 40 jobs want 4 replicas at 20 jobs/s each within 0.5 s; the maximum is 3.
            (first,) = await scaler.cycle()
            # What the cycle read is what it decides on: a job may already be taken by then.
            seen = first.inputs.ready + first.inputs.running
            assert seen + int(await redis.get(keys.completed_counter("receipt")) or 0) == JOBS
            assert first.desired == min(3, decide(first.inputs, pool_limits(settings, "receipt"), 0).reactive)
            assert first.desired == 3
            while True:
                await asyncio.sleep(0.25)
                await scaler.cycle()
                pids = target.pids("receipt")
                started.update(pids)
                peak = max(peak, len(pids))
                if await done(sessions, ids) and not pids and not target.draining_pids():
                    break
    finally:
        await target.close()
        await arq_redis.aclose()

    assert peak == 3
    assert len(started) == 3  # no worker crashed and got replaced
    async with sessions() as session:
        rows = (
            await session.scalars(
                select(SubmissionStep).where(SubmissionStep.submission_id.in_(ids), SubmissionStep.step == "receipt")
            )
        ).all()
    # No job lost, none done twice: one receipt each, every step succeeded on its first attempt.
    assert {(row.state, row.attempts) for row in rows} == {("succeeded", 1)}
    assert len(list(settings.smtp.outbox_dir.rglob("*.eml"))) == JOBS
    assert await redis.zcard(keys.queue_name("receipt")) == 0
    assert int(await redis.get(keys.completed_counter("receipt"))) == JOBS


async def done(sessions: async_sessionmaker[AsyncSession], ids: list[int]) -> bool:
    async with sessions() as session:
        states = (
            await session.scalars(
                select(SubmissionStep.state).where(
                    SubmissionStep.submission_id.in_(ids), SubmissionStep.step == "receipt"
                )
            )
        ).all()
    return all(state == "succeeded" for state in states)
