"""Messages from the central admin system: a stand-in admin system sends real signed HTTP requests.

What a user would notice: a granted extension moves the student's dates on their open page (a real
WAMP session subscribed as the student) and the autoscaler's forecast counts them at their new
deadline; a removed enrolment ends the student's socket's course topics; notices reach the people
they are for. Anything unsigned, stale, repeated with another body, unknown or malformed is refused
with a 4xx naming the problem and changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.sources import deadline_loads
from core import keys
from core.access import can_subscribe, principal_for
from core.admin_messages import IDEMPOTENCY_HEADER, REPLAYED_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from core.clock import isoformat, utcnow
from core.models import Enrolment, Event, Extension, Flash
from core.settings import Settings
from router.server import RIGHTS_CHANGED
from tests.fixtures.app import World
from tests.fixtures.router import RunningRouter, autobahn_session, close_autobahn
from tests.fixtures.router import World as WampWorld
from tests.integration.test_api_security import STRONG, production
from tests.integration.test_router import Inbox

SECRET = "inbound-test-secret-4f9c2a7e1b8d3c6f"
PATH = "/api/admin/messages"
WAIT = 15  # upper bound on waiting for a condition; never an assertion about speed


class AdminSystem:
    """The central admin system as handin sees it: signed JSON posts, one idempotency key per message."""

    def __init__(self, http: httpx.AsyncClient, secret: str = SECRET) -> None:
        self.http = http
        self.secret = secret
        self.sent = 0

    async def post(
        self,
        body: bytes,
        *,
        key: str | None = None,
        timestamp: int | None = None,
        secret: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        self.sent += 1
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        sent_headers = {
            "Content-Type": "application/json",
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: sign(secret or self.secret, stamp, body),
            IDEMPOTENCY_HEADER: key or f"msg-{time.time_ns()}-{self.sent}",
        }
        sent_headers.update(headers or {})
        return await self.http.post(PATH, content=body, headers=sent_headers)

    async def send(self, type: str, data: dict[str, Any], **options: Any) -> httpx.Response:
        return await self.post(json.dumps({"type": type, "data": data}).encode(), **options)


@pytest.fixture
def inbound(settings: Settings) -> Settings:
    settings.admin.inbound_secret = SECRET
    return settings


@pytest.fixture
async def admin(inbound: Settings, app: FastAPI) -> AsyncIterator[AdminSystem]:
    """Over ASGI with no Origin, cookie or CSRF token: a machine, not a browser."""
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://handin.test") as http:
        yield AdminSystem(http)


async def audit_count(sessions: async_sessionmaker[AsyncSession]) -> tuple[int, int, int, int]:
    """Everything a message could change: events, flashes, extensions, enrolments."""
    async with sessions() as session:
        counts = [
            await session.scalar(select(func.count()).select_from(model))
            for model in (Event, Flash, Extension, Enrolment)
        ]
    return tuple(int(count or 0) for count in counts)  # type: ignore[return-value]


async def test_an_extension_moves_the_students_open_page_and_the_forecast(
    inbound: Settings,
    live_server: str,
    world: World,
    wamp_router: RunningRouter,
    wamp_world: WampWorld,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    student = world.users["student"]
    deadline = utcnow().replace(microsecond=0) + timedelta(days=3)
    page = await autobahn_session(wamp_router.url, await wamp_world.login(student))
    try:
        inbox = Inbox()
        await page.subscribe(inbox, keys.user_topic(student))
        # Over a real socket to a real server, as the admin system would call.
        async with httpx.AsyncClient(base_url=live_server) as http:
            answer = await AdminSystem(http).send(
                "extension.granted",
                {
                    "email": World.email("student"),
                    "assignment_id": world.assignment_id,
                    "deadline": isoformat(deadline),
                },
                key="ext-1",
            )
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "applied" and answer.json()["idempotency_key"] == "ext-1"
        event = await inbox.next()
        assert event["type"] == "extension.updated"
        assert event["data"]["assignment_id"] == world.assignment_id
        assert event["data"]["deadline"] == isoformat(deadline)
    finally:
        await close_autobahn(page)
    async with sessions() as session:
        extension = await session.scalar(select(Extension).where(Extension.user_id == student))
        assert extension is not None and extension.deadline == deadline
        # No cut-off given: the assignment's own day between deadline and cut-off.
        assert extension.cutoff_at == deadline + timedelta(days=1)
        record = await session.scalar(select(Event).where(Event.type == "admin.message"))
        assert record is not None and record.actor == "admin" and record.data["type"] == "extension.granted"
    # The autoscaler's next cycle counts this student at their own deadline.
    loads = await deadline_loads(sessions, utcnow(), timedelta(days=7))
    moved = [load for load in loads if load.deadline == deadline.timestamp()]
    assert len(moved) == 1 and moved[0].enrolled == 1 and moved[0].assignment_id == world.assignment_id


async def test_a_removed_enrolment_ends_the_students_course_topics(
    admin: AdminSystem,
    world: World,
    wamp_router: RunningRouter,
    wamp_world: WampWorld,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    student = world.users["student"]
    page = await autobahn_session(wamp_router.url, await wamp_world.login(student))
    try:
        await page.subscribe(Inbox(), keys.course_topic(world.course_id))
        await page.subscribe(Inbox(), keys.assignment_topic(world.assignment_id))
        answer = await admin.send("enrolment.removed", {"user_id": student, "course_code": "CS101"})
        assert answer.status_code == 200, answer.text
        left = await asyncio.wait_for(asyncio.shield(page.left), WAIT)
        assert left.reason == RIGHTS_CHANGED
        assert keys.course_topic(world.course_id) in (left.message or "")
    finally:
        await close_autobahn(page)
    async with sessions() as session:
        principal = await principal_for(session, student)
        assert principal is not None
        assert not await can_subscribe(session, principal, keys.course_topic(world.course_id))
        flash = await session.scalar(select(Flash).where(Flash.user_id == student))
        assert flash is not None and "no longer enrolled in CS101" in flash.text

    # And back: the admin system enrols them again, and the course is theirs once more.
    answer = await admin.send("enrolment.added", {"email": World.email("student"), "course_id": world.course_id})
    assert answer.status_code == 200, answer.text
    async with sessions() as session:
        principal = await principal_for(session, student)
        assert principal is not None
        assert await can_subscribe(session, principal, keys.course_topic(world.course_id))


async def test_notices_reach_the_student_and_the_course(
    admin: AdminSystem, world: World, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    answer = await admin.send(
        "notice.student", {"user_id": world.users["student"], "text": "Your fee waiver is approved.", "kind": "success"}
    )
    assert answer.status_code == 200, answer.text
    answer = await admin.send("notice.course", {"course_code": "CS101", "text": "Room change: lecture in B12."})
    assert answer.status_code == 200, answer.text
    async with sessions() as session:
        flashes = list(await session.scalars(select(Flash).order_by(Flash.id)))
        message = await session.scalar(
            select(Event).where(Event.topic == keys.course_topic(world.course_id), Event.type == "message")
        )
    texts = {(flash.user_id, flash.text) for flash in flashes}
    assert (world.users["student"], "Your fee waiver is approved.") in texts
    # Every member of the course, staff included, and nobody else.
    members = {world.users[who] for who in ("student", "student2", "staff")}
    assert {user for user, text in texts if text == "Room change: lecture in B12."} == members
    assert message is not None and message.data["args"] == ["Room change: lecture in B12."]


async def test_a_repeated_key_gets_the_first_answer_and_another_body_409(
    admin: AdminSystem, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    notice = {"user_id": world.users["student"], "text": "Library fine cleared."}
    first = await admin.send("notice.student", notice, key="notice-7")
    assert first.status_code == 200, first.text
    before = await audit_count(sessions)
    again = await admin.send("notice.student", notice, key="notice-7")
    assert again.status_code == 200 and again.json() == first.json()
    assert again.headers[REPLAYED_HEADER] == "true"
    other = await admin.send("notice.student", {**notice, "text": "Something else."}, key="notice-7")
    assert other.status_code == 409 and "different message" in other.json()["detail"]
    assert await audit_count(sessions) == before


async def test_two_copies_at_once_are_applied_once(
    admin: AdminSystem, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    notice = {"user_id": world.users["student2"], "text": "Sent twice at once."}
    answers = await asyncio.gather(*(admin.send("notice.student", notice, key="twice") for _ in range(3)))
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert len({json.dumps(answer.json(), sort_keys=True) for answer in answers}) == 1
    async with sessions() as session:
        count = await session.scalar(select(func.count()).select_from(Flash).where(Flash.text == "Sent twice at once."))
    assert count == 1


def refusals(world: World) -> list[tuple[str, dict[str, Any], int, str]]:
    """(what, how to send it, status, words the answer names the problem with)."""
    student = world.users["student"]
    good = json.dumps({"type": "notice.student", "data": {"user_id": student, "text": "hi"}}).encode()
    return [
        ("bad signature", {"body": good, "secret": "not-the-shared-secret-at-all-0000"}, 401, "bad signature"),
        ("no signature", {"body": good, "headers": {SIGNATURE_HEADER: ""}}, 401, "missing"),
        ("stale timestamp", {"body": good, "timestamp": int(time.time()) - 3600}, 401, "timestamp"),
        ("future timestamp", {"body": good, "timestamp": int(time.time()) + 3600}, 401, "timestamp"),
        ("no idempotency key", {"body": good, "headers": {IDEMPOTENCY_HEADER: ""}}, 400, IDEMPOTENCY_HEADER),
        ("not JSON", {"body": b"type=notice"}, 400, "not JSON"),
        (
            "unknown type",
            {"body": b'{"type": "grade.changed", "data": {}}'},
            422,
            "unknown message type 'grade.changed'",
        ),
        (
            "extra field",
            {"body": b'{"type": "notice.student", "data": {"user_id": 1, "text": "x", "sms": true}}'},
            422,
            "sms",
        ),
        (
            "missing text",
            {"body": json.dumps({"type": "notice.student", "data": {"user_id": student}}).encode()},
            422,
            "text",
        ),
        (
            "naive deadline",
            {
                "body": json.dumps(
                    {
                        "type": "extension.granted",
                        "data": {
                            "user_id": student,
                            "assignment_id": world.assignment_id,
                            "deadline": "2030-01-01T10:00:00",
                        },
                    }
                ).encode()
            },
            422,
            "deadline",
        ),
        (
            "both user id and email",
            {
                "body": json.dumps(
                    {"type": "notice.student", "data": {"user_id": student, "email": "a@b", "text": "x"}}
                ).encode()
            },
            422,
            "exactly one of user_id and email",
        ),
        (
            "unknown user",
            {
                "body": json.dumps(
                    {"type": "notice.student", "data": {"email": "nobody@test.handin", "text": "x"}}
                ).encode()
            },
            422,
            "no user with email 'nobody@test.handin'",
        ),
        (
            "unknown course",
            {
                "body": json.dumps(
                    {"type": "enrolment.added", "data": {"user_id": student, "course_code": "NOPE1"}}
                ).encode()
            },
            422,
            "no course with code 'NOPE1'",
        ),
        (
            "extension for staff",
            {
                "body": json.dumps(
                    {
                        "type": "extension.granted",
                        "data": {
                            "user_id": world.users["staff"],
                            "assignment_id": world.assignment_id,
                            "deadline": "2030-01-01T10:00:00Z",
                        },
                    }
                ).encode()
            },
            422,
            "is not a student",
        ),
        (
            "off-site link",
            {
                "body": json.dumps(
                    {
                        "type": "notice.student",
                        "data": {"user_id": student, "text": "x", "link_url": "https://evil.example/"},
                    }
                ).encode()
            },
            422,
            "path on this site",
        ),
    ]


async def test_bad_messages_get_a_4xx_naming_the_problem_and_change_nothing(
    admin: AdminSystem, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    before = await audit_count(sessions)
    for what, request, status, words in refusals(world):
        answer = await admin.post(**request)
        assert answer.status_code == status, f"{what}: {answer.status_code} {answer.text}"
        assert words in answer.json()["detail"], f"{what}: {answer.text}"
    assert await audit_count(sessions) == before


async def test_a_body_over_the_webhook_limit_is_refused(inbound: Settings, admin: AdminSystem, world: World) -> None:
    text = "x" * (inbound.security.max_webhook_body_bytes + 1)
    answer = await admin.send("notice.student", {"user_id": world.users["student"], "text": text})
    assert answer.status_code == 413


async def test_without_a_secret_the_endpoint_is_off(settings: Settings, client: httpx.AsyncClient) -> None:
    assert settings.admin.inbound_secret == ""
    answer = await client.post(PATH, json={"type": "notice.course", "data": {}})
    assert answer.status_code == 503 and "not configured" in answer.json()["detail"]


def test_production_refuses_a_weak_inbound_secret() -> None:
    admin = {"secret": STRONG[::-1]}
    production(admin=admin)  # unset: messages from the admin system are off, and that is allowed
    production(admin={**admin, "inbound_secret": STRONG[1:] + "!"})
    with pytest.raises(ValueError, match="HANDIN_ADMIN__INBOUND_SECRET"):
        production(admin={**admin, "inbound_secret": "short"})
