"""Every staff form over real HTTP, on SQLite and PostgreSQL: what staff see after saving,
the event open pages get, and that a student's upload at the same moment goes through.

On SQLite every transaction takes the write lock at BEGIN, so a handler that
read through one session and wrote through another waited on itself until the
busy timeout; these tests post each form while a student uploads.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import isoformat, utcnow
from core.models import Assignment, Extension, Submission
from tests.fixtures.app import World
from tests.fixtures.conditions import subscribed

Login = Callable[[str], Awaitable[httpx.AsyncClient]]
PDF = b"%PDF-1.4\n" + b"%% page one\n" * 100


class Topic:
    """The events published on one topic while the test listens."""

    def __init__(self, pubsub: PubSub) -> None:
        self.pubsub = pubsub

    async def next(self, type: str) -> dict[str, Any]:
        """The next event of that type; the per-test timeout ends a wait for one that never comes."""
        while True:
            message = await self.pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None and (event := json.loads(message["data"]))["type"] == type:
                return dict(event)


@asynccontextmanager
async def listening(redis: Redis, topic: str) -> AsyncIterator[Topic]:
    pubsub = await subscribed(redis, keys.events_channel(topic))
    try:
        yield Topic(pubsub)
    finally:
        await pubsub.aclose()


def local(moment: datetime) -> str:
    """A datetime-local field's value with the page's tz_offset 0 (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M")


def minute(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(second=0, microsecond=0)


def assignment_form(title: str, deadline: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "tz_offset": "0",
        "title": title,
        "description": "Write about queues.",
        "late_policy": "10% off per day",
        "opens_at": local(deadline - timedelta(days=7)),
        "deadline": local(deadline),
        "cutoff_at": local(deadline + timedelta(days=1)),
        "max_mb": "5",
        "accepted_types": ["pdf", "text"],
        "max_attempts": "4",
        **extra,
    }


async def upload(http: httpx.AsyncClient, assignment_id: int) -> int:
    answer = await http.post(f"/api/assignments/{assignment_id}/submissions", files={"file": ("essay.pdf", PDF)})
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


async def test_create_assignment_while_a_student_uploads(
    as_user: Login, world: World, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    staff, student = await as_user("staff"), await as_user("student")
    deadline = minute(utcnow() + timedelta(days=10))
    async with listening(redis, keys.course_topic(world.course_id)) as course:
        created, submission_id = await asyncio.gather(
            staff.post(
                f"/staff/courses/{world.course_id}/assignments/new", data=assignment_form("Queues essay", deadline)
            ),
            upload(student, world.assignment_id),
        )
        assert created.status_code == 303, created.text
        match = re.fullmatch(r"/staff/assignments/(\d+)", created.headers["location"])
        assert match is not None
        new_id = int(match[1])
        event = await course.next("assignment.created")
    assert event["data"] == {"assignment_id": new_id, "title": "Queues essay"}
    assert submission_id > 0
    page = await staff.get(f"/staff/assignments/{new_id}/edit")
    assert page.status_code == 200
    assert 'value="Queues essay"' in page.text and f'data-utc="{isoformat(deadline)}"' in page.text
    assert 'value="5.0"' in page.text and 'value="4"' in page.text
    async with sessions() as session:
        row = await session.get(Assignment, new_id)
        assert row is not None and row.course_id == world.course_id and row.accepted_types == ["pdf", "text"]
    # The new assignment is on the staff's list.
    assert "Queues essay" in (await staff.get("/staff")).text


async def test_edit_assignment_while_a_student_uploads(as_user: Login, world: World, redis: Redis) -> None:
    staff, student = await as_user("staff"), await as_user("student")
    deadline = minute(utcnow() + timedelta(days=3))
    async with listening(redis, keys.assignment_topic(world.assignment_id)) as topic:
        saved, _ = await asyncio.gather(
            staff.post(
                f"/staff/assignments/{world.assignment_id}/edit",
                data=assignment_form("Essay, revised", deadline, max_attempts="2"),
            ),
            upload(student, world.assignment_id),
        )
        assert saved.status_code == 303, saved.text
        assert saved.headers["location"] == f"/staff/assignments/{world.assignment_id}?saved=1"
        event = await topic.next("assignment.updated")
    assert event["data"]["title"] == "Essay, revised"
    assert event["data"]["deadline"] == isoformat(deadline) and event["data"]["max_attempts"] == 2
    table = await staff.get(saved.headers["location"])
    assert table.status_code == 200 and "Essay, revised" in table.text
    form = (await staff.get(f"/staff/assignments/{world.assignment_id}/edit")).text
    assert 'value="Essay, revised"' in form and f'data-utc="{isoformat(deadline)}"' in form
    assert 'value="10% off per day"' in form
    # The student's own page shows the new title.
    assert "Essay, revised" in (await student.get(f"/assignments/{world.assignment_id}")).text


async def test_a_refused_edit_shows_the_problems_and_saves_nothing(as_user: Login, world: World) -> None:
    staff = await as_user("staff")
    deadline = minute(utcnow() + timedelta(days=3))
    answer = await staff.post(
        f"/staff/assignments/{world.assignment_id}/edit", data=assignment_form("", deadline, max_attempts="0")
    )
    assert answer.status_code == 422
    assert "Give the assignment a title." in answer.text and "Attempts: a whole number from 1 to 100." in answer.text
    assert 'value="Essay"' in (await staff.get(f"/staff/assignments/{world.assignment_id}/edit")).text


async def test_add_and_remove_an_extension_while_a_student_uploads(
    as_user: Login, world: World, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    staff, student, other = await as_user("staff"), await as_user("student"), await as_user("student2")
    extended = minute(utcnow() + timedelta(days=5))
    student_id = world.users["student"]
    async with listening(redis, keys.user_topic(student_id)) as mine:
        added, _ = await asyncio.gather(
            staff.post(
                f"/staff/assignments/{world.assignment_id}/extensions",
                data={
                    "tz_offset": "0",
                    "user_id": str(student_id),
                    "deadline": local(extended),
                    "cutoff_at": local(extended + timedelta(days=1)),
                },
            ),
            upload(other, world.assignment_id),
        )
        assert added.status_code == 303, added.text
        assert added.headers["location"] == f"/staff/assignments/{world.assignment_id}/edit#extensions"
        event = await mine.next("extension.updated")
        assert event["data"]["deadline"] == isoformat(extended)
        page = (await staff.get(f"/staff/assignments/{world.assignment_id}/edit")).text
        assert "Remove extension for Student" in page and f'datetime="{isoformat(extended)}"' in page
        async with sessions() as session:
            extension_id = await session.scalar(
                select(Extension.id).where(Extension.assignment_id == world.assignment_id)
            )
        assert extension_id is not None

        removed, _ = await asyncio.gather(
            staff.post(f"/staff/assignments/{world.assignment_id}/extensions/{extension_id}/delete"),
            upload(other, world.assignment_id),
        )
        assert removed.status_code == 303, removed.text
        event = await mine.next("extension.updated")
    async with sessions() as session:
        assignment = await session.get(Assignment, world.assignment_id)
        assert assignment is not None
    # The student is told their dates are the assignment's again.
    assert event["data"]["deadline"] == isoformat(assignment.deadline)
    page = (await staff.get(f"/staff/assignments/{world.assignment_id}/edit")).text
    assert "Remove extension for" not in page and "No extensions." in page
    assert student  # the student's upload alongside is student2's: both clients stay logged in


async def test_grade_while_a_student_uploads(
    as_user: Login, world: World, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    staff, student, other = await as_user("staff"), await as_user("student"), await as_user("student2")
    submission_id = await upload(student, world.assignment_id)
    async with listening(redis, keys.assignment_topic(world.assignment_id)) as topic:
        graded, _ = await asyncio.gather(
            staff.put(f"/api/submissions/{submission_id}/grade", json={"grade": "A-", "feedback": "Clear."}),
            upload(other, world.assignment_id),
        )
        assert graded.status_code == 200, graded.text
        event = await topic.next("marking.updated")
    assert graded.json()["grade"] == "A-"
    assert event["data"]["submission_id"] == submission_id and event["data"]["marked"] is True
    page = (await staff.get(f"/staff/submissions/{submission_id}")).text
    assert 'value="A-"' in page and "Clear." in page
    # Not released yet: the student does not see it.
    assert (await student.get(f"/api/submissions/{submission_id}")).json()["grade"] is None


async def test_release_now_while_a_student_uploads(as_user: Login, world: World, redis: Redis) -> None:
    staff, student, other = await as_user("staff"), await as_user("student"), await as_user("student2")
    submission_id = await upload(student, world.assignment_id)
    assert (await staff.put(f"/api/submissions/{submission_id}/grade", json={"grade": "B"})).status_code == 200
    async with listening(redis, keys.submission_topic(submission_id)) as mine:
        released, _ = await asyncio.gather(
            staff.post(f"/api/assignments/{world.assignment_id}/release", json={}),
            upload(other, world.assignment_id),
        )
        assert released.status_code == 200, released.text
        event = await mine.next("grade.released")
    assert released.json()["grades_sent"] == 1 and released.json()["detail"].startswith("Released: 1 grades sent")
    assert event["data"]["grade"] == "B"
    assert (await student.get(f"/api/submissions/{submission_id}")).json()["grade"] == "B"
    table = (await staff.get(f"/api/staff/assignments/{world.assignment_id}/submissions")).json()
    assert table["released_at"] is not None and table["release_scheduled_at"] is None


async def test_schedule_and_cancel_a_release_while_a_student_uploads(
    as_user: Login, world: World, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    staff, student = await as_user("staff"), await as_user("student")
    at = minute(utcnow() + timedelta(days=2))
    async with listening(redis, keys.assignment_topic(world.assignment_id)) as topic:
        scheduled, _ = await asyncio.gather(
            staff.post(f"/api/assignments/{world.assignment_id}/release", json={"at": isoformat(at)}),
            upload(student, world.assignment_id),
        )
        assert scheduled.status_code == 200, scheduled.text
        assert scheduled.json()["scheduled_at"] == isoformat(at)
        event = await topic.next("grades.release_scheduled")
        assert event["data"] == {"assignment_id": world.assignment_id, "at": isoformat(at)}
        table = (await staff.get(f"/api/staff/assignments/{world.assignment_id}/submissions")).json()
        assert table["release_scheduled_at"] == isoformat(at)
        # The deferred job waits on the maintenance queue.
        queued = await redis.zscore(keys.queue_name(keys.MAINTENANCE_TASK), keys.release_job_id(world.assignment_id))
        assert queued is not None

        cancelled, _ = await asyncio.gather(
            staff.delete(f"/api/assignments/{world.assignment_id}/release"),
            upload(student, world.assignment_id),
        )
        assert cancelled.status_code == 200, cancelled.text
        answer = cancelled.json()
        assert {key: answer[key] for key in ("cancelled", "detail")} == {
            "cancelled": True,
            "detail": "Scheduled release cancelled.",
        }
        event = await topic.next("grades.release_cancelled")
    assert event["data"]["was_at"] == isoformat(at)
    # The answer names its event, so the page that cancelled knows the echo for its own.
    assert answer["seq"] == event["seq"]
    table = (await staff.get(f"/api/staff/assignments/{world.assignment_id}/submissions")).json()
    assert table["release_scheduled_at"] is None and table["released_at"] is None
    assert await redis.zscore(keys.queue_name(keys.MAINTENANCE_TASK), keys.release_job_id(world.assignment_id)) is None
    async with sessions() as session:
        attempts = list(
            await session.scalars(select(Submission.id).where(Submission.user_id == world.users["student"]))
        )
    assert len(attempts) == 2  # both uploads alongside went through


async def test_staff_pages_send_strangers_to_login_and_others_to_not_found(
    as_user: Login, world: World, client: httpx.AsyncClient, sessions: async_sessionmaker[AsyncSession]
) -> None:
    edit = f"/staff/assignments/{world.assignment_id}/edit"
    anonymous = await client.get(edit)
    assert anonymous.status_code == 303 and anonymous.headers["location"] == f"/login?next={edit}"
    deadline = minute(utcnow() + timedelta(days=3))
    for who in ("student", "other_staff"):
        http = await as_user(who)
        for answer in (
            await http.get(edit),
            await http.post(edit, data=assignment_form("Taken over", deadline)),
            await http.post(f"/staff/courses/{world.course_id}/assignments/new", data=assignment_form("X", deadline)),
            await http.get("/staff/assignments/987654"),
        ):
            assert answer.status_code == 404
            assert "it is not yours to see" in answer.text
            # Still their page: logged in as themselves, with their own header.
            assert f'<span class="who">{who.title()}</span>' in answer.text
    assert (
        "There is no such course"
        in (await (await as_user("student")).get(f"/staff/courses/{world.course_id}/assignments/new")).text
    )
    async with sessions() as session:
        assignment = await session.get(Assignment, world.assignment_id)
        assert assignment is not None and assignment.title == "Essay"
