"""Marking progress: staff claim a script so two markers do not take the same one; the student
sees where their work is in marking (never who marks it, never a grade before release) and how
far the assignment's marking has got, live over a real router."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.db import transaction
from core.models import Enrolment
from tests.fixtures.app import World, make_user
from tests.fixtures.router import RunningRouter, autobahn_session, close_autobahn
from tests.fixtures.router import World as Tickets
from tests.integration.test_router import Inbox


async def second_marker(sessions: async_sessionmaker[AsyncSession], world: World) -> None:
    world.users["marker2"] = await make_user(sessions, World.email("marker2"))
    async with transaction(sessions) as session:
        session.add(Enrolment(user_id=world.users["marker2"], course_id=world.course_id, role="staff"))


async def next_of(inbox: Inbox, kind: str) -> dict[str, Any]:
    while True:
        envelope = await inbox.next()
        if envelope["type"] == kind:
            return envelope


async def test_a_second_marker_must_confirm_and_the_student_never_learns_who_marks(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any, sessions: Any
) -> None:
    await second_marker(sessions, world)
    submission = await wamp_world.submission(world.assignment_id, world.users["student"])
    await wamp_world.submission(world.assignment_id, world.users["student2"])  # m = 2
    owner = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student"]))
    watcher = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["staff"]))
    classmate = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student2"]))
    try:
        mine, staff_view, progress = Inbox(), Inbox(), Inbox()
        await owner.subscribe(mine, keys.submission_topic(submission))
        await watcher.subscribe(staff_view, keys.submission_topic(submission))
        await classmate.subscribe(progress, keys.assignment_topic(world.assignment_id))
        student, staff, marker2 = await as_user("student"), await as_user("staff"), await as_user("marker2")

        before = (await student.get(f"/api/submissions/{submission}/marking")).json()
        assert before["state"] == "queued" and before["latest"] is True
        assert before["progress"] == {"submissions": 2, "graded": 0}

        claimed = await staff.post(f"/api/submissions/{submission}/claim", json={})
        assert claimed.status_code == 200 and claimed.json()["marker_id"] == world.users["staff"]
        seen = await next_of(staff_view, "marking.state")
        assert seen["data"]["state"] == "marking" and seen["data"]["marker_name"] == "Staff"
        told = await next_of(mine, "marking.state")
        assert told["data"] == {"submission_id": submission, "state": "marking"}  # not who

        # A second marker is told who has it, and nothing moves until they confirm.
        refused = await marker2.post(f"/api/submissions/{submission}/claim", json={})
        assert refused.status_code == 409
        assert refused.json()["marker_name"] == "Staff" and "Being marked by Staff" in refused.json()["detail"]
        assert (await staff.get(f"/api/submissions/{submission}/marking")).json()["marker_id"] == world.users["staff"]
        taken = await marker2.post(f"/api/submissions/{submission}/claim", json={"take_over": True})
        assert taken.status_code == 200 and taken.json()["marker_name"] == "Marker2"
        assert (await next_of(staff_view, "marking.state"))["data"]["marker_id"] == world.users["marker2"]
        assert (await next_of(mine, "marking.state"))["data"] == {"submission_id": submission, "state": "marking"}
        view = (await student.get(f"/api/submissions/{submission}/marking")).json()
        assert "marker_name" not in view and "marker_id" not in view and "Marker2" not in str(view)

        # Marking it ends the claim; the student learns it is marked, the class how far marking got, no grade.
        graded = await marker2.put(f"/api/submissions/{submission}/grade", json={"grade": "A-", "feedback": "Fine"})
        assert graded.status_code == 200
        marked = await next_of(mine, "marking.state")
        assert marked["data"] == {"submission_id": submission, "state": "marked"}
        counts = await next_of(progress, "marking.updated")
        assert counts["data"] == {"submissions": 2, "graded": 1}
        catch_up = (await student.get(f"/api/topics/{keys.submission_topic(submission)}/events")).json()
        assert "A-" not in str(catch_up) and "Marker2" not in str(catch_up)
        assert (await student.get(f"/api/submissions/{submission}/marking")).json()["state"] == "marked"
        # Outsiders and students may not claim; another student may not look.
        assert (await student.post(f"/api/submissions/{submission}/claim", json={})).status_code == 404
        assert (await (await as_user("student2")).get(f"/api/submissions/{submission}/marking")).status_code == 404
    finally:
        for client in (owner, watcher, classmate):
            await close_autobahn(client)


async def test_a_marker_gives_a_script_back_to_the_queue(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any
) -> None:
    submission = await wamp_world.submission(world.assignment_id, world.users["student"])
    staff = await as_user("staff")
    assert (await staff.post(f"/api/submissions/{submission}/claim", json={})).status_code == 200
    assert (await staff.post(f"/api/submissions/{submission}/claim", json={})).status_code == 200  # again: no-op
    released = await staff.delete(f"/api/submissions/{submission}/claim")
    assert released.status_code == 200 and released.json()["state"] == "queued"
    student = await as_user("student")
    assert (await student.get(f"/api/submissions/{submission}/marking")).json()["state"] == "queued"


async def test_the_staff_table_shows_who_is_marking_each_submission_live_on_the_staff_topic(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any, sessions: Any
) -> None:
    await second_marker(sessions, world)
    submission = await wamp_world.submission(world.assignment_id, world.users["student"])
    other = await wamp_world.submission(world.assignment_id, world.users["student2"])
    watcher = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["marker2"]))
    try:
        live = Inbox()
        await watcher.subscribe(live, keys.course_staff_topic(world.course_id))
        staff, marker2 = await as_user("staff"), await as_user("marker2")

        async def markers() -> dict[int, str | None]:
            answer = await marker2.get(f"/api/staff/assignments/{world.assignment_id}/submissions")
            assert answer.status_code == 200, answer.text
            return {row["id"]: row["marker"] for row in answer.json()["rows"]}

        assert await markers() == {submission: None, other: None}
        assert (await staff.post(f"/api/submissions/{submission}/claim", json={})).status_code == 200
        claimed = await next_of(live, "marking.state")
        assert (
            claimed["data"]["submission_id"] == submission and claimed["data"]["assignment_id"] == world.assignment_id
        )
        assert (claimed["data"]["state"], claimed["data"]["marker_name"]) == ("marking", "Staff")
        assert await markers() == {submission: "Staff", other: None}

        taken = await marker2.post(f"/api/submissions/{submission}/claim", json={"take_over": True})
        assert taken.status_code == 200, taken.text
        assert (await next_of(live, "marking.state"))["data"]["marker_name"] == "Marker2"
        assert await markers() == {submission: "Marker2", other: None}

        assert (await marker2.delete(f"/api/submissions/{submission}/claim")).status_code == 200
        assert (await next_of(live, "marking.state"))["data"]["state"] == "queued"
        assert await markers() == {submission: None, other: None}
    finally:
        await close_autobahn(watcher)
