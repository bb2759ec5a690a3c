"""The arrival curve and submit share learned from past assignments, on SQLite and PostgreSQL."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.forecast import HOUR, ArrivalCurve, DeadlineLoad, forecast
from autoscaler.history import PRIOR_ASSIGNMENTS, past_assignments
from autoscaler.main import Autoscaler
from autoscaler.targets import LocalTarget
from core import keys
from core.clock import utcnow
from core.models import Assignment, Enrolment, Extension, Submission, User
from core.settings import Settings
from tests.fixtures.factories import Factory, World

STUDENTS = 20  # besides the world's two, who never submit in the past
SUBMITTERS = 12
PAST = 6


def upload(assignment: Assignment, user: User, attempt: int, at: datetime) -> Submission:
    return Submission(
        assignment_id=assignment.id,
        user_id=user.id,
        attempt=attempt,
        sha256="0" * 64,
        size=10,
        original_filename="essay.txt",
        content_type="text/plain",
        kind="text",
        storage_key=f"past/{uuid.uuid4().hex}",
        received_at=at,
    )


def idle_process(task: str) -> list[str]:
    return ["sleep", "600"]


async def early_birds(factory: Factory, sessions: async_sessionmaker[AsyncSession], now: datetime) -> World:
    """A course with an assignment due in 10 minutes whose students always handed in days ahead."""
    world = await factory.world(deadline=now + timedelta(minutes=10), cutoff_at=now + timedelta(minutes=10))
    async with sessions() as session, session.begin():
        users = [
            User(email=f"bird{i}-{uuid.uuid4().hex[:6]}@example.test", name="B", password_hash="x")
            for i in range(STUDENTS)
        ]
        session.add_all(users)
        await session.flush()
        session.add_all(Enrolment(user_id=u.id, course_id=world.course.id, role="student") for u in users)
        for k in range(1, PAST + 1):
            deadline = now - timedelta(weeks=k)
            assignment = Assignment(
                course_id=world.course.id,
                title=f"Past {k}",
                opens_at=deadline - timedelta(days=14),
                deadline=deadline,
                cutoff_at=deadline,
            )
            session.add(assignment)
            await session.flush()
            for i, user in enumerate(users[:SUBMITTERS]):
                session.add(upload(assignment, user, 1, deadline - timedelta(days=2, hours=i)))
            # A second attempt in the final minute is not a new arrival.
            session.add(upload(assignment, users[0], 2, deadline - timedelta(minutes=1)))
            # Staff uploads do not count; nor do students with their own dates.
            session.add(upload(assignment, world.staff, 1, deadline - timedelta(minutes=2)))
            session.add(
                Extension(
                    assignment_id=assignment.id,
                    user_id=users[-1].id,
                    deadline=deadline + timedelta(days=3),
                    cutoff_at=deadline + timedelta(days=3),
                )
            )
            session.add(upload(assignment, users[-1], 1, deadline + timedelta(days=2)))
    return world


async def test_first_uploads_are_read_relative_to_each_deadline(
    factory: Factory, sessions: async_sessionmaker[AsyncSession]
) -> None:
    now = utcnow()
    world = await early_birds(factory, sessions, now)
    past = [p for p in await past_assignments(sessions, now, {world.course.id}) if p.course_id == world.course.id]
    # The open assignment is not history yet.
    assert len(past) == PAST
    for p in past:
        assert p.enrolled == STUDENTS + 2 - 1  # the extended student is left out
        assert len(p.first_uploads) == SUBMITTERS
        before = sorted(p.deadline - t for t in p.first_uploads)
        assert before[0] == pytest.approx(2 * 24 * HOUR, abs=1)
        assert before[-1] == pytest.approx(2 * 24 * HOUR + (SUBMITTERS - 1) * HOUR, abs=1)


async def test_the_forecast_follows_the_course_history_and_the_fit_is_kept_for_the_next_leader(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], settings: Settings, redis: Redis
) -> None:
    now = utcnow()
    world = await early_birds(factory, sessions, now)
    target = LocalTarget(command=idle_process, stop_timeout=5)
    try:
        scaler = Autoscaler(settings, redis, sessions, target, clock=lambda: now.timestamp(), tasks=["similarity"])
        learned = await scaler.read_forecast(now.timestamp())
        course = scaler.learned.for_course(world.course.id)
        weight = PAST / (PAST + PRIOR_ASSIGNMENTS)
        share = SUBMITTERS / (STUDENTS + 2 - 1)
        assert course.submit_share == pytest.approx((1 - weight) * 0.95 + weight * share)
        assert course.curve.final_hour_share < 0.5 * settings.autoscaler.final_hour_share

        # The shipped prior would expect several times more in the next lead time.
        assert learned.jobs > 0
        load = DeadlineLoad(world.assignment.id, now.timestamp() + 600, STUDENTS + 2, 0, submit_share=0.95)
        prior_jobs = forecast([load], now.timestamp(), settings.autoscaler.lead, ArrivalCurve()).jobs
        assert learned.jobs < 0.5 * prior_jobs

        # A new leader starts from the saved fit instead of the prior.
        successor = Autoscaler(settings, redis, sessions, target, clock=lambda: now.timestamp(), tasks=["similarity"])
        assert await successor.state.load_history() is not None
        await successor.read_forecast(now.timestamp())
        assert successor.learned.fitted_at == scaler.learned.fitted_at
        assert successor.learned.for_course(world.course.id) == course
    finally:
        await target.close()
        await redis.delete(keys.AUTOSCALER_STATE)
