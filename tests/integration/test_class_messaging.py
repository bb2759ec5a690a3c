"""Class messaging on the course page: staff announcements, hiding, muting and unread counts,
over HTTP and a real router, as the page's people see them."""

from __future__ import annotations

from typing import Any

from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions

from core import keys
from core.chat import MUTED
from tests.fixtures.app import World
from tests.fixtures.router import RunningRouter, autobahn_session, close_autobahn
from tests.fixtures.router import World as Tickets
from tests.integration.test_router import Inbox

ACK = PublishOptions(acknowledge=True, exclude_me=False)


async def refusal(client: Any, topic: str, text: str, **kwargs: Any) -> tuple[str, str] | None:
    try:
        await client.publish(topic, text, options=ACK, **kwargs)
    except ApplicationError as error:
        return str(error.error), str(error.args[0] if error.args else "")
    return None


async def events(client: Any, topic: str) -> list[dict[str, Any]]:
    answer = await client.get(f"/api/topics/{topic}/events")
    assert answer.status_code == 200, answer.text
    return list(answer.json()["events"])


async def test_staff_announce_and_only_staff_may(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any
) -> None:
    course, topic = world.course_id, keys.course_topic(world.course_id)
    reader = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student2"]))
    try:
        inbox = Inbox()
        await reader.subscribe(inbox, topic)
        student, other_staff, staff = await as_user("student"), await as_user("other_staff"), await as_user("staff")
        for outsider in (student, other_staff):
            answer = await outsider.post(f"/api/courses/{course}/announcements", json={"text": "Exam moved"})
            assert answer.status_code == 404
        answer = await staff.post(f"/api/courses/{course}/announcements", json={"text": "  Exam moved to Friday  "})
        assert answer.status_code == 201, answer.text
        live = await inbox.next()
        assert live["type"] == "announcement" and live["seq"] == answer.json()["seq"]
        assert live["data"] == {
            "author_id": world.users["staff"],
            "text": "Exam moved to Friday",
            "pinned": True,
            "emailed": False,
        }
        assert (await staff.post(f"/api/courses/{course}/announcements", json={"text": "  "})).status_code == 422
    finally:
        await close_autobahn(reader)


async def test_a_hidden_message_reaches_no_student_until_shown_again(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any
) -> None:
    course, topic = world.course_id, keys.course_topic(world.course_id)
    author = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student"]))
    reader = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student2"]))
    try:
        inbox = Inbox()
        await reader.subscribe(inbox, topic)
        assert await refusal(author, topic, "off-topic rant", kind="note") is None
        seq = (await inbox.next())["seq"]
        student, staff = await as_user("student2"), await as_user("staff")
        assert (await student.post(f"/api/courses/{course}/chat/{seq}/hide", json={})).status_code == 404
        assert (await staff.post(f"/api/courses/{course}/chat/{seq}/hide", json={"hidden": True})).status_code == 200
        hidden = await inbox.next()
        assert hidden["type"] == "message.hidden" and hidden["data"] == {"seq": seq, "hidden": True}
        seen = await events(student, topic)
        assert "off-topic rant" not in str(seen)
        assert [e["data"].get("hidden") for e in seen if e["seq"] == seq] == [True]
        assert "off-topic rant" in str(await events(staff, topic))  # staff still read it, to show it again
        assert (await staff.post(f"/api/courses/{course}/chat/{seq}/hide", json={"hidden": False})).status_code == 200
        assert (await inbox.next())["data"] == {"seq": seq, "hidden": False}
        again = [e for e in await events(student, topic) if e["seq"] == seq]
        assert again[0]["data"]["args"] == ["off-topic rant"] and not again[0]["data"]["hidden"]
        assert (await staff.post(f"/api/courses/{course}/chat/{seq + 99}/hide", json={})).status_code == 404
    finally:
        await close_autobahn(author)
        await close_autobahn(reader)


async def test_a_muted_student_is_refused_by_the_router_until_the_mute_is_lifted(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any
) -> None:
    course, topic = world.course_id, keys.course_topic(world.course_id)
    muted = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student"]))
    classmate = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student2"]))
    try:
        staff = await as_user("staff")
        body = {"user_id": world.users["student"], "minutes": 30}
        assert (await (await as_user("student2")).post(f"/api/courses/{course}/mutes", json=body)).status_code == 404
        answer = await staff.post(f"/api/courses/{course}/mutes", json=body)
        assert answer.status_code == 200 and answer.json()["muted"] is True
        refused = await refusal(muted, topic, "let me talk")
        assert refused is not None and refused[0] == MUTED and "muted you in this course until" in refused[1]
        assert await refusal(classmate, topic, "I still can") is None
        # Staff cannot be muted: only students of the course.
        staff_body = {"user_id": world.users["staff"], "minutes": 30}
        assert (await staff.post(f"/api/courses/{course}/mutes", json=staff_body)).status_code == 404
        lifted = await staff.post(f"/api/courses/{course}/mutes", json={**body, "minutes": 0})
        assert lifted.status_code == 200 and lifted.json()["muted"] is False
        assert await refusal(muted, topic, "thank you") is None
    finally:
        await close_autobahn(muted)
        await close_autobahn(classmate)


async def test_unread_counts_are_per_user_and_follow_reading(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any
) -> None:
    course, topic = world.course_id, keys.course_topic(world.course_id)
    author = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student"]))
    try:
        reader, writer, staff = await as_user("student2"), await as_user("student"), await as_user("staff")

        async def unread(client: Any) -> int:
            answer = await client.get("/api/chat/unread")
            assert answer.status_code == 200
            return int(answer.json()["courses"][str(course)]["unread"])

        assert await unread(reader) == 0
        for text in ("first question?", "second question?"):
            assert await refusal(author, topic, text, kind="question") is None
        await staff.post(f"/api/courses/{course}/announcements", json={"text": "Read chapter 3"})
        assert await unread(reader) == 3
        assert await unread(writer) == 1  # one's own messages are read
        # Opening the course page reads everything there is.
        assert (await reader.get(f"/courses/{course}")).status_code == 200
        assert await unread(reader) == 0
        assert await refusal(author, topic, "third?", kind="question") is None
        assert await unread(reader) == 1
        seq = int((await reader.get("/api/chat/unread")).json()["courses"][str(course)]["seq"])
        assert (await reader.post(f"/api/courses/{course}/read", json={"seq": seq})).status_code == 200
        assert await unread(reader) == 0
        assert (
            await (await as_user("other_staff")).post(f"/api/courses/{course}/read", json={"seq": 1})
        ).status_code == 404
    finally:
        await close_autobahn(author)
