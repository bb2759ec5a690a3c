"""The router with autobahn-python as an independent client, on both serializers.

Events enter exactly as workers send them (core.events: audit row, then Redis
publish after commit) and arrive as EVENT with the envelope as args[0].
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from autobahn.wamp.types import PublishOptions
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import transaction
from core.events import EventBatch
from core.models import Event
from tests.fixtures.router import RunningRouter, World, autobahn_session, close_autobahn

pytestmark = pytest.mark.parametrize("serializer", ["json", "msgpack"])


async def emit(sessions: async_sessionmaker[AsyncSession], redis: Redis, topic: str, type: str, data: Any) -> int:
    """What a worker does: record the event in its transaction, publish after commit."""
    async with transaction(sessions) as db:
        batch = EventBatch(db)
        envelope = await batch.emit(topic, type, data)
    await batch.publish(redis)
    return envelope.seq


class Inbox:
    def __init__(self) -> None:
        self.items: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def __call__(self, envelope: dict[str, Any], **kwargs: Any) -> None:
        self.items.put_nowait(envelope)

    async def next(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.items.get(), 5)


async def test_student_receives_step_events_of_own_submission(
    serializer: str, wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    student = await wamp_world.user("student")
    course = await wamp_world.course()
    await wamp_world.enrol(student, course)
    submission = await wamp_world.submission(await wamp_world.assignment(course), student)
    client = await autobahn_session(wamp_router.url, await wamp_world.login(student), serializer)
    try:
        assert client._authid == str(student) and client._authrole == "student"
        inbox = Inbox()
        await client.subscribe(inbox, f"submission.{submission}")
        seq = await emit(sessions, redis, f"submission.{submission}", "step.succeeded", {"step": "scan"})
        envelope = await inbox.next()
        assert envelope["seq"] == seq and envelope["type"] == "step.succeeded"
        assert envelope["topic"] == f"submission.{submission}" and envelope["data"]["step"] == "scan"
    finally:
        await close_autobahn(client)


async def test_similarity_matches_reach_staff_but_not_the_student(
    serializer: str, wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    student, teacher = await wamp_world.user("student"), await wamp_world.user("teacher")
    course = await wamp_world.course()
    await wamp_world.enrol(student, course)
    await wamp_world.enrol(teacher, course, "staff")
    topic = f"submission.{await wamp_world.submission(await wamp_world.assignment(course), student)}"
    student_client = await autobahn_session(wamp_router.url, await wamp_world.login(student), serializer)
    staff_client = await autobahn_session(wamp_router.url, await wamp_world.login(teacher), serializer)
    try:
        assert staff_client._authrole == "staff"
        student_inbox, staff_inbox = Inbox(), Inbox()
        await student_client.subscribe(student_inbox, topic)
        await staff_client.subscribe(staff_inbox, topic)
        # As core.steps.finish_step records the built-in check: the matches are nested in the result.
        matches = [{"submission_id": 9, "user_id": 99, "score": 80.0, "shared": 12, "spans": [[1, 40]]}]
        result = {"provider": "builtin", "score": 80.0, "fingerprints": 15, "matches": matches}
        data = {"step": "similarity", "state": "succeeded", "result": result}
        await emit(sessions, redis, topic, "step.succeeded", data)
        assert (await staff_inbox.next())["data"] == data
        student_sees = (await student_inbox.next())["data"]
        assert student_sees["result"] == {"provider": "builtin", "score": 80.0}
    finally:
        await close_autobahn(student_client)
        await close_autobahn(staff_client)


async def test_member_publishes_class_message_stored_and_delivered_to_others_not_self(
    serializer: str, wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    alice, bob = await wamp_world.user("alice"), await wamp_world.user("bob")
    course = await wamp_world.course()
    await wamp_world.enrol(alice, course)
    await wamp_world.enrol(bob, course)
    topic = f"course.{course}"
    a = await autobahn_session(wamp_router.url, await wamp_world.login(alice), serializer)
    b = await autobahn_session(wamp_router.url, await wamp_world.login(bob), serializer)
    try:
        a_inbox, b_inbox = Inbox(), Inbox()
        await a.subscribe(a_inbox, topic)
        await b.subscribe(b_inbox, topic)
        publication = await a.publish(topic, "hello class", options=PublishOptions(acknowledge=True), urgent=True)
        assert publication.id >= 1
        envelope = await b_inbox.next()
        assert envelope["type"] == "message"
        assert envelope["data"] == {"author_id": alice, "args": ["hello class"], "kwargs": {"urgent": True}}
        async with sessions() as db:
            stored = (await db.scalars(select(Event).where(Event.topic == topic))).one()
        assert (stored.seq, stored.actor_id) == (envelope["seq"], alice)
        # exclude_me (the default) kept it from the publisher; with exclude_me=False it comes back.
        await a.publish(topic, "again", options=PublishOptions(acknowledge=True, exclude_me=False))
        assert (await a_inbox.next())["data"]["args"] == ["again"]
        assert a_inbox.items.qsize() == 0
    finally:
        await close_autobahn(a)
        await close_autobahn(b)


async def test_refused_subscribe_and_publish(
    serializer: str, wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    student, other = await wamp_world.user("student"), await wamp_world.user("other")
    course, elsewhere = await wamp_world.course(), await wamp_world.course()
    await wamp_world.enrol(student, course)
    await wamp_world.enrol(other, course)
    others_submission = await wamp_world.submission(await wamp_world.assignment(course), other)
    client = await autobahn_session(wamp_router.url, await wamp_world.login(student), serializer)
    try:
        with pytest.raises(ApplicationError) as refused:
            await client.subscribe(Inbox(), f"submission.{others_submission}")
        assert refused.value.error == "wamp.error.not_authorized"
        with pytest.raises(ApplicationError) as refused:
            await client.publish(f"course.{elsewhere}", "hi", options=PublishOptions(acknowledge=True))
        assert refused.value.error == "wamp.error.not_authorized"
        with pytest.raises(ApplicationError) as refused:
            await client.publish(f"submission.{others_submission}", "x", options=PublishOptions(acknowledge=True))
        assert refused.value.error == "wamp.error.not_authorized"
        async with sessions() as db:
            assert (await db.scalars(select(Event))).all() == []
        assert client.is_attached()  # a refusal is an ERROR, not the end of the session
    finally:
        await close_autobahn(client)
