"""Marking and grade release: now, scheduled (a real deferred arq job), cancelled, twice."""

from __future__ import annotations

import asyncio
import json
import warnings
from datetime import timedelta
from typing import Any

import pytest
from arq import func
from arq.connections import ArqRedis
from arq.worker import Worker
from redis.asyncio import Redis
from sqlalchemy import func as sql_func
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import utcnow
from core.events import events_after
from core.grades import GradeRefused, cancel_release, enter_grade, release_grades_job, release_now, schedule_release
from core.models import Assignment, Event, Flash
from core.queues import redis_settings
from core.settings import Settings
from tests.fixtures.conditions import subscribed
from tests.fixtures.factories import Factory, World


async def graded_world(factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis) -> tuple[World, Any]:
    world = await factory.world()
    submission = await factory.submission(world, b"an essay")
    await enter_grade(sessions, redis, submission.id, world.staff.id, "A-", "Clear argument.")
    return world, submission


async def count(sessions: async_sessionmaker[AsyncSession], model: Any, *where: Any) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(sql_func.count()).select_from(model).where(*where)) or 0)


async def test_grading_tells_other_staff_without_leaking_the_grade(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    world = await factory.world()
    submission = await factory.submission(world, b"an essay")
    pubsub = await subscribed(redis, keys.events_channel(keys.assignment_topic(world.assignment.id)))
    try:
        await enter_grade(sessions, redis, submission.id, world.staff.id, "B+", "Good")
        async with asyncio.timeout(2):
            message = None
            while message is None:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
    finally:
        await pubsub.aclose()
    event = json.loads(message["data"])
    assert event["type"] == "marking.updated"
    assert event["data"] == {"submission_id": submission.id, "marked": True, "submissions": 1, "graded": 1}
    # Before release the student's topic carries no grade.
    async with sessions() as session:
        sent = await events_after(session, keys.submission_topic(submission.id), 0)
    assert not [e for e in sent if e.type == "grade.released"]


async def test_only_staff_of_the_course_may_grade_or_release(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis, arq_redis: ArqRedis
) -> None:
    world = await factory.world()
    submission = await factory.submission(world, b"an essay")
    for user in (world.student, world.outsider):
        with pytest.raises(GradeRefused) as refused:
            await enter_grade(sessions, redis, submission.id, user.id, "A", "")
        assert refused.value.status == 404
        with pytest.raises(GradeRefused):
            await release_now(sessions, arq_redis, world.assignment.id, user.id)


async def test_release_now_sends_grades_and_one_flash_per_student_and_twice_adds_nothing(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis, arq_redis: ArqRedis
) -> None:
    world, submission = await graded_world(factory, sessions, redis)
    first = await release_now(sessions, arq_redis, world.assignment.id, world.staff.id)
    assert (first.grades_sent, first.flashes_created) == (1, 2)  # two enrolled students
    second = await release_now(sessions, arq_redis, world.assignment.id, world.staff.id)
    assert (second.grades_sent, second.flashes_created) == (0, 0)

    async with sessions() as session:
        sent = await events_after(session, keys.submission_topic(submission.id), 0)
        grade_events = [e for e in sent if e.type == "grade.released"]
        assignment = await session.get(Assignment, world.assignment.id)
        audit = list(
            await session.scalars(
                select(Event).where(
                    Event.topic == keys.assignment_topic(world.assignment.id), Event.type == "grades.released"
                )
            )
        )
    assert [e.data for e in grade_events] == [
        {"submission_id": submission.id, "grade": "A-", "feedback": "Clear argument."}
    ]
    assert assignment is not None and assignment.grades_released_at is not None
    assert [(row.actor_id, row.actor) for row in audit] == [(world.staff.id, f"staff:{world.staff.id}")] * 2
    assert await count(sessions, Flash, Flash.user_id == world.student.id) == 1
    assert await count(sessions, Flash, Flash.user_id == world.other_student.id) == 1
    assert await count(sessions, Flash, Flash.user_id == world.staff.id) == 0

    # A grade changed after release goes straight to the student's page.
    await enter_grade(sessions, redis, submission.id, world.staff.id, "A", "Clear argument.")
    async with sessions() as session:
        latest = (await events_after(session, keys.submission_topic(submission.id), 0))[-1]
    assert (latest.type, latest.data["grade"]) == ("grade.released", "A")


def maintenance_worker(settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> Worker:
    return Worker(
        functions=[func(release_grades_job, name=keys.RELEASE_GRADES_FUNCTION)],
        queue_name=keys.queue_name(keys.MAINTENANCE_TASK),
        redis_settings=redis_settings(settings.redis_url),
        burst=True,
        poll_delay=0.05,
        handle_signals=False,
        keep_result=0,
        ctx={"sessions": sessions},
    )


async def run_worker(worker: Worker) -> None:
    try:
        await asyncio.wait_for(worker.main(), timeout=15)
    finally:
        # arq's close() calls redis' deprecated close(); that warning is arq's, not ours.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            await worker.close()


async def test_a_scheduled_release_fires_at_its_time_and_can_be_moved_or_cancelled(
    factory: Factory,
    sessions: async_sessionmaker[AsyncSession],
    redis: Redis,
    arq_redis: ArqRedis,
    settings: Settings,
) -> None:
    world, submission = await graded_world(factory, sessions, redis)
    assignment_id = world.assignment.id
    queue = keys.queue_name(keys.MAINTENANCE_TASK)

    # Scheduled far ahead, then cancelled: the job is gone and nothing is released.
    await schedule_release(sessions, arq_redis, assignment_id, world.staff.id, utcnow() + timedelta(hours=1))
    assert await arq_redis.zscore(queue, keys.release_job_id(assignment_id)) is not None
    assert await cancel_release(sessions, arq_redis, assignment_id, world.staff.id) is not None
    assert await arq_redis.zcard(queue) == 0

    # Scheduled far ahead, then moved to a second from now: one job, it fires once.
    await schedule_release(sessions, arq_redis, assignment_id, world.staff.id, utcnow() + timedelta(hours=2))
    soon = utcnow() + timedelta(seconds=1)
    await schedule_release(sessions, arq_redis, assignment_id, world.staff.id, soon)
    assert await arq_redis.zcard(queue) == 1
    async with sessions() as session:
        before = await session.get(Assignment, assignment_id)
        assert before is not None and before.grades_released_at is None
    await run_worker(maintenance_worker(settings, sessions))

    async with sessions() as session:
        after = await session.get(Assignment, assignment_id)
        events = await events_after(session, keys.submission_topic(submission.id), 0)
    assert after is not None and after.grades_released_at is not None and after.release_scheduled_at is None
    assert after.grades_released_at >= soon
    assert [e.type for e in events].count("grade.released") == 1
    assert await count(sessions, Flash, Flash.user_id == world.student.id) == 1


async def test_a_stale_release_job_does_nothing(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis, settings: Settings
) -> None:
    world, _ = await graded_world(factory, sessions, redis)
    result = await release_grades_job(
        {"sessions": sessions, "redis": redis}, world.assignment.id, world.staff.id, "2030-01-01T00:00:00.000Z"
    )
    assert result.startswith("stale")
    async with sessions() as session:
        assignment = await session.get(Assignment, world.assignment.id)
    assert assignment is not None and assignment.grades_released_at is None


async def test_the_staff_json_api_grades_releases_and_refuses_clearly(
    as_user: Any, world: Any, sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    """Through the real app: the calls the staff pages make, and what students and outsiders get."""

    staff, student, other_staff = await as_user("staff"), await as_user("student"), await as_user("other_staff")
    upload = await student.post(
        f"/api/assignments/{world.assignment_id}/submissions", files={"file": ("essay.txt", b"my essay text " * 20)}
    )
    assert upload.status_code == 202, upload.text
    submission_id = upload.json()["id"]

    for who in (student, other_staff):
        refused = await who.put(f"/api/submissions/{submission_id}/grade", json={"grade": "A", "feedback": ""})
        assert refused.status_code == 404
        assert refused.json()["detail"]
    graded = await staff.put(f"/api/submissions/{submission_id}/grade", json={"grade": "B", "feedback": "Fine."})
    assert graded.status_code == 200 and graded.json()["progress"] == {"submissions": 1, "graded": 1}

    # Before release the student's own view carries no grade.
    assert (await student.get(f"/api/submissions/{submission_id}")).json()["grade"] is None
    past = await staff.post(f"/api/assignments/{world.assignment_id}/release", json={"at": "2001-01-01T00:00:00Z"})
    assert past.status_code == 422 and "future" in past.json()["detail"]
    table = await staff.get(f"/api/staff/assignments/{world.assignment_id}/submissions?filter=all")
    assert [row["grade"] for row in table.json()["rows"]] == ["B"]
    assert (await student.get(f"/api/staff/assignments/{world.assignment_id}/submissions")).status_code == 404

    released = await staff.post(f"/api/assignments/{world.assignment_id}/release", json={})
    assert released.status_code == 200 and released.json()["flashes_created"] == 2
    assert (await student.get(f"/api/submissions/{submission_id}")).json()["grade"] == "B"

    flashes = (await student.get("/api/flashes")).json()["flashes"]
    assert [f["link_url"] for f in flashes] == [f"/submissions/{submission_id}"]
    confirm_url = f"/api/flashes/{flashes[0]['id']}/confirm"
    assert (await other_staff.post(confirm_url, json={"reason": "seen"})).status_code == 404
    assert (await student.post(confirm_url, json={"reason": "seen"})).status_code == 204
    assert (await student.get("/api/flashes")).json()["flashes"] == []


async def test_pages_render_for_their_people_and_hide_from_others(as_user: Any, world: Any) -> None:
    staff, student, outsider = await as_user("staff"), await as_user("student"), await as_user("outsider")
    assert (await student.get("/courses")).status_code == 200
    page = await student.get(f"/assignments/{world.assignment_id}")
    assert page.status_code == 200 and 'id="upload-form"' in page.text
    assert (await outsider.get(f"/assignments/{world.assignment_id}")).status_code == 404
    assert (await student.get("/staff/dashboard")).status_code == 404
    staff_page = await staff.get(f"/staff/assignments/{world.assignment_id}")
    assert staff_page.status_code == 200 and "Release grades now" in staff_page.text
    assert (await staff.get("/staff/dashboard")).status_code == 200
    dashboard = await staff.get("/api/staff/dashboard")
    assert dashboard.status_code == 200 and len(dashboard.json()["arrivals_per_minute"]) == 60
