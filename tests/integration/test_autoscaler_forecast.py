"""The forecast read from the database, and each decision published to the staff dashboard."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.main import Autoscaler
from autoscaler.sources import deadline_loads
from autoscaler.targets import LocalTarget
from core import keys
from core.clock import utcnow
from core.models import Enrolment, Event, Submission, User
from core.settings import Settings
from tests.fixtures.factories import Factory

STUDENTS = 400


async def crowd_due_soon(factory: Factory, sessions: async_sessionmaker[AsyncSession], due_in: timedelta) -> int:
    """An assignment due soon, 400 more students enrolled, the first student already submitted."""
    world = await factory.world(deadline=utcnow() + due_in, cutoff_at=utcnow() + due_in + timedelta(hours=1))
    async with sessions() as session, session.begin():
        users = [User(email=f"crowd{i}@example.test", name=f"S{i}", password_hash="x") for i in range(STUDENTS)]
        session.add_all(users)
        await session.flush()
        session.add_all(Enrolment(user_id=u.id, course_id=world.course.id, role="student") for u in users)
    await factory.submission(world, b"early bird")
    return world.assignment.id


async def test_students_yet_to_submit_are_counted_per_assignment(
    factory: Factory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    assignment_id = await crowd_due_soon(factory, sessions, timedelta(minutes=10))
    loads = await deadline_loads(sessions, utcnow(), timedelta(hours=48))
    (load,) = [load for load in loads if load.assignment_id == assignment_id]
    # The world's two students plus the crowd; one of them has submitted.
    assert (load.enrolled, load.submitted, load.expected_remaining) == (STUDENTS + 2, 1, STUDENTS + 1)
    assert await deadline_loads(sessions, utcnow(), timedelta(minutes=5)) == []


async def test_a_deadline_ahead_grows_the_pools_and_the_decision_reaches_the_dashboard(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], settings: Settings, redis: Redis
) -> None:
    await crowd_due_soon(factory, sessions, timedelta(minutes=2))
    settings = settings.model_copy(
        update={"autoscaler": settings.autoscaler.model_copy(update={"pod_start_seconds": 60})}
    )
    pubsub = redis.pubsub()
    await pubsub.subscribe(keys.events_channel(keys.STAFF_DASHBOARD_TOPIC))
    scaler = Autoscaler(settings, redis, sessions, LocalTarget())

    decisions = await scaler.cycle(dry_run=True)

    by_pool = {d.task: d for d in decisions}
    # No job is queued yet, but about half of the ~380 expected students land within the
    # next 65 s (~3/s): the CPU-bound similarity pool (1 job/s per replica) grows for them.
    assert 150 < by_pool["similarity"].inputs.forecast_jobs < 250
    assert by_pool["similarity"].forecast >= 4
    assert by_pool["similarity"].desired == min(by_pool["similarity"].forecast, 20)
    assert by_pool["similarity"].inputs.ready == 0
    async with sessions() as session:
        event = await session.scalar(select(Event).where(Event.topic == keys.STAFF_DASHBOARD_TOPIC))
        assert await session.scalar(select(Submission.id)) is not None
    assert event is not None and event.type == "autoscaler.decision"
    assert {pool["pool"] for pool in event.data["pools"]} == set(keys.TASKS)
    assert event.data["forecast"]["assignments"] == 1

    async with asyncio.timeout(5):
        while (message := await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)) is None:
            pass
    envelope = json.loads(message["data"])
    assert (envelope["type"], envelope["seq"]) == ("autoscaler.decision", event.seq)
    await pubsub.aclose()
