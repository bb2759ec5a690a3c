"""The forecast read from the database, and each decision published to the staff dashboard."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.main import Autoscaler
from autoscaler.sources import deadline_loads
from autoscaler.targets import LocalTarget
from core import keys
from core.clock import utcnow
from core.models import Enrolment, Event, Extension, Submission, User
from core.settings import Settings
from tests.fixtures.conditions import subscribed
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
    assert (load.enrolled, load.submitted) == (STUDENTS + 2, 1)
    assert load.late_window == pytest.approx(3600, abs=1)
    assert await deadline_loads(sessions, utcnow(), timedelta(minutes=5)) == []


async def test_students_with_extensions_are_due_at_their_own_dates_and_late_work_is_expected(
    factory: Factory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """Past the deadline but before the cut-off the assignment still counts; extended students count apart."""
    now = utcnow()
    world = await factory.world(deadline=now - timedelta(minutes=5), cutoff_at=now + timedelta(hours=1))
    async with sessions() as session, session.begin():
        session.add(
            Extension(
                assignment_id=world.assignment.id,
                user_id=world.other_student.id,
                deadline=now + timedelta(days=1),
                cutoff_at=now + timedelta(days=1, hours=1),
            )
        )
    loads = sorted(
        (
            load
            for load in await deadline_loads(sessions, now, timedelta(hours=48))
            if load.assignment_id == world.assignment.id
        ),
        key=lambda load: load.deadline,
    )
    on_time, extended = loads
    assert (on_time.enrolled, extended.enrolled) == (1, 1)
    assert on_time.deadline < now.timestamp() < on_time.cutoff
    assert extended.deadline == pytest.approx((now + timedelta(days=1)).timestamp(), abs=1)
    # After the cut-off only the extended student is still due.
    later = [
        load
        for load in await deadline_loads(sessions, now + timedelta(hours=2), timedelta(hours=48))
        if load.assignment_id == world.assignment.id
    ]
    assert [load.enrolled for load in later] == [1]
    assert later[0].deadline == extended.deadline


async def test_a_deadline_ahead_grows_the_pools_and_the_decision_reaches_the_dashboard(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], settings: Settings, redis: Redis
) -> None:
    await crowd_due_soon(factory, sessions, timedelta(minutes=2))
    settings = settings.model_copy(
        update={"autoscaler": settings.autoscaler.model_copy(update={"pod_start_seconds": 60})}
    )
    pubsub = await subscribed(redis, keys.events_channel(keys.FLEET_TOPIC))
    scaler = Autoscaler(settings, redis, sessions, LocalTarget())

    decisions = await scaler.cycle(dry_run=True)

    by_pool = {d.task: d for d in decisions}
    # No job is queued yet. Two minutes out the curve expects ~7% of the class still to come; this
    # class is far behind it (all but one of 402), which the forecast follows up to MAX_BEHIND x the
    # curve: ~50 still to come, about half of them within the next 65 s. The CPU-bound similarity
    # pool (1 job/s per replica) grows for them.
    assert 15 < by_pool["similarity"].inputs.forecast_jobs < 40
    assert by_pool["similarity"].forecast >= 2
    assert by_pool["similarity"].desired == min(by_pool["similarity"].forecast, 20)
    assert by_pool["similarity"].inputs.ready == 0
    async with sessions() as session:
        event = await session.scalar(select(Event).where(Event.topic == keys.FLEET_TOPIC))
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
