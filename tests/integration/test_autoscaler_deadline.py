"""One real loop through a deadline: real Redis, a real database, the local target's real processes.

The autoscaler's clock is stepped by the test (the deadline is simulated); a
restart in the middle continues from the saved state, and a Redis outage holds
the pool instead of cutting it.
"""

from __future__ import annotations

from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.main import Autoscaler
from autoscaler.targets import LocalTarget
from core import keys
from core.clock import utcnow
from core.models import Enrolment, User
from core.settings import Settings
from tests.fixtures.factories import Factory

STUDENTS = 400


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def idle_process(task: str) -> list[str]:
    return ["sleep", "600"]  # stands in for a worker: the target starts and stops real processes


async def test_a_deadline_grows_the_pool_a_restart_and_a_redis_outage_keep_it_and_it_falls_after(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], settings: Settings, redis: Redis
) -> None:
    start = utcnow()
    deadline = start + timedelta(seconds=90)
    world = await factory.world(deadline=deadline, cutoff_at=deadline + timedelta(minutes=10))
    async with sessions() as session, session.begin():
        users = [User(email=f"due{i}@example.test", name=f"D{i}", password_hash="x") for i in range(STUDENTS)]
        session.add_all(users)
        await session.flush()
        session.add_all(Enrolment(user_id=u.id, course_id=world.course.id, role="student") for u in users)
    pools = settings.autoscaler.pools.model_copy(
        update={
            "similarity": settings.autoscaler.pools.similarity.model_copy(
                update={"min_replicas": 1, "max_replicas": 6, "drain_rate_per_replica": 0.1}
            )
        }
    )
    settings = settings.model_copy(
        update={
            "autoscaler": settings.autoscaler.model_copy(
                update={"pools": pools, "scale_down_window_seconds": 60.0, "pod_start_seconds": 60}
            )
        }
    )
    clock = Clock(start.timestamp())
    target = LocalTarget(command=idle_process, stop_timeout=5)
    try:
        scaler = Autoscaler(settings, redis, sessions, target, clock=clock, tasks=["similarity"])
        (quiet,) = await scaler.cycle()
        # 90 s before the deadline the forecast already asks for the cap.
        assert quiet.forecast >= 6
        assert len(target.pids("similarity")) == 6
        clock.now = deadline.timestamp() - 5
        (last,) = await scaler.cycle()
        assert last.desired == 6

        # Restart 10 s after the deadline: the late window forecasts little; the saved hold keeps the pool.
        clock.now = deadline.timestamp() + 10
        restarted = Autoscaler(settings, redis, sessions, target, clock=clock, tasks=["similarity"])
        (after, *_) = await restarted.cycle()
        assert after.forecast < 6
        assert after.desired == 6
        assert any("window" in reason for reason in after.reasons)

        # Redis unreachable: the pool is held, the cycle completes, health says why.
        blind_redis = Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
        blind = Autoscaler(settings, blind_redis, sessions, target, clock=clock, tasks=["similarity"])
        clock.now += 300  # far past the window: with queues it would shrink
        (held,) = await blind.cycle()
        assert (held.inputs.queues_known, held.desired) == (False, 6)
        assert blind.metrics.degraded == "redis unreachable"
        await blind_redis.aclose()

        # Queues readable again, past the window and the cut-off: back to the minimum.
        clock.now = deadline.timestamp() + 11 * 60
        (done,) = await restarted.cycle()
        assert done.desired == 1
        assert len(target.pids("similarity")) == 1
    finally:
        await target.close()
        await redis.delete(keys.AUTOSCALER_STATE)
