"""Class chat on course.<id>: a rate per user across router replicas, a size limit, staff
moderation that open pages see, retention, and a catch-up bounded in bytes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from redis.asyncio import Redis
from sqlalchemy import select

from core import keys
from core.clock import utcnow
from core.db import transaction
from core.events import EventBatch
from core.models import Event
from core.settings import Settings
from router.chat import MESSAGE_TOO_LARGE, RATE_LIMITED
from router.server import running_router
from tests.fixtures.app import World
from tests.fixtures.router import RunningRouter, autobahn_session, close_autobahn
from tests.fixtures.router import World as Tickets
from tests.integration.test_router import Inbox
from workers.maintenance import prune_chat_job

ACK = PublishOptions(acknowledge=True)


@pytest.fixture
async def two_routers(settings: Settings, redis: Redis) -> AsyncIterator[list[RunningRouter]]:
    """Two replicas sharing Redis and the database, with a small chat budget."""
    chat = settings.chat.model_copy(update={"rate_limit_messages": 3, "rate_limit_window_seconds": 300})
    limited = settings.model_copy(update={"chat": chat})
    async with (
        running_router(limited, "127.0.0.1", 0) as (a, server_a),
        running_router(limited, "127.0.0.1", 0) as (b, server_b),
    ):
        yield [
            RunningRouter(router, f"ws://127.0.0.1:{port}/ws", port)
            for router, port in ((a, server_a.sockets[0].getsockname()[1]), (b, server_b.sockets[0].getsockname()[1]))
        ]


async def refusal(client: Any, topic: str, *args: Any) -> str | None:
    try:
        await client.publish(topic, *args, options=ACK)
    except ApplicationError as error:
        return str(error.error)
    return None


async def test_the_rate_limit_holds_across_replicas_and_big_messages_are_refused(
    two_routers: list[RunningRouter], world: World, wamp_world: Tickets, redis: Redis
) -> None:
    student, topic = world.users["student"], keys.course_topic(world.course_id)
    one = await autobahn_session(two_routers[0].url, await wamp_world.login(student))
    two = await autobahn_session(two_routers[1].url, await wamp_world.login(student))
    classmate = await autobahn_session(two_routers[0].url, await wamp_world.login(world.users["student2"]))
    try:
        assert await refusal(one, topic, "x" * 5000) == MESSAGE_TOO_LARGE  # over 4096 bytes; not counted
        assert [await refusal(c, topic, "hello") for c in (one, two, one)] == [None, None, None]
        assert await refusal(two, topic, "one more") == RATE_LIMITED
        assert await refusal(one, topic, "and another") == RATE_LIMITED
        # The budget is per user: a classmate still talks.
        assert await refusal(classmate, topic, "hi all") is None
    finally:
        for client in (one, two, classmate):
            await close_autobahn(client)


async def test_staff_delete_a_message_and_open_pages_are_told(
    wamp_router: RunningRouter, world: World, wamp_world: Tickets, as_user: Any, sessions: Any
) -> None:
    topic = keys.course_topic(world.course_id)
    author = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student"]))
    reader = await autobahn_session(wamp_router.url, await wamp_world.login(world.users["student2"]))
    try:
        inbox = Inbox()
        await reader.subscribe(inbox, topic)
        await author.publish(topic, "rude words", options=ACK)
        message = await inbox.next()
        assert message["type"] == "message" and message["data"]["args"] == ["rude words"]
        seq = message["seq"]

        student, other_staff = await as_user("student2"), await as_user("other_staff")
        for outsider in (student, other_staff):  # a member who is not staff, staff of another course
            assert (await outsider.delete(f"/api/courses/{world.course_id}/chat/{seq}")).status_code == 404
        staff = await as_user("staff")
        assert (await staff.delete(f"/api/courses/{world.course_id}/chat/{seq}")).status_code == 204
        deleted = await inbox.next()
        assert deleted["type"] == "message.deleted" and deleted["data"] == {"seq": seq}
        assert (await staff.delete(f"/api/courses/{world.course_id}/chat/{seq + 100}")).status_code == 404

        # The audit trail keeps that a message was there and who wrote it, not what it said.
        async with sessions() as db:
            row = await db.scalar(select(Event).where(Event.topic == topic, Event.seq == seq))
        assert row is not None and "rude words" not in str(row.data)
        assert row.data == {"author_id": world.users["student"], "deleted": True, "deleted_by": world.users["staff"]}
        catch_up = (await student.get(f"/api/topics/{topic}/events")).json()["events"]
        assert "rude words" not in str(catch_up)
        assert [e["type"] for e in catch_up] == ["message", "message.deleted"]
    finally:
        await close_autobahn(author)
        await close_autobahn(reader)


async def emit_message(sessions: Any, topic: str, text: str, author: int, age: timedelta = timedelta(0)) -> int:
    async with transaction(sessions) as db:
        envelope = await EventBatch(db).emit(
            topic, "message", {"author_id": author, "args": [text], "kwargs": {}}, actor="user", actor_id=author
        )
        row = await db.scalar(select(Event).where(Event.topic == topic, Event.seq == envelope.seq))
        assert row is not None
        row.at = utcnow() - age
        return envelope.seq


async def test_old_messages_are_pruned_by_the_maintenance_worker(
    world: World, sessions: Any, settings: Settings
) -> None:
    topic, author = keys.course_topic(world.course_id), world.users["student"]
    await emit_message(sessions, topic, "last term", author, timedelta(days=settings.chat.retention_days + 1))
    recent = await emit_message(sessions, topic, "today", author)
    assert await prune_chat_job({"settings": settings, "sessions": sessions}) == 1
    async with sessions() as db:
        left = list(await db.scalars(select(Event.seq).where(Event.topic == topic)))
    assert left == [recent]


async def test_a_catch_up_page_is_bounded_in_bytes_and_says_there_is_more(
    world: World, sessions: Any, as_user: Any, settings: Settings
) -> None:
    topic = keys.course_topic(world.course_id)
    settings.chat.catch_up_max_bytes = 32 * 1024  # the app reads its settings per request
    for n in range(40):
        await emit_message(sessions, topic, f"{n:02} " + "x" * 4000, world.users["student"])
    student = await as_user("student")
    seen: list[int] = []
    after, pages = 0, 0
    while True:
        page = await student.get(f"/api/topics/{topic}/events", params={"after": after})
        assert page.status_code == 200
        assert len(page.content) <= settings.chat.catch_up_max_bytes + 8 * 1024  # the envelope around the events
        body = page.json()
        seen += [e["seq"] for e in body["events"]]
        pages += 1
        if not body["more"]:
            break
        after = body["events"][-1]["seq"]
    assert seen == list(range(1, 41)) and pages > 1
    settings.chat.catch_up_max_bytes = 1024  # smaller than one event: still one per page, never none
    one = (await student.get(f"/api/topics/{topic}/events")).json()
    assert len(one["events"]) == 1 and one["more"] is True
