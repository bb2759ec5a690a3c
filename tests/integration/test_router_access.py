"""Who may subscribe to what, through real sessions; tickets; logout ending the socket."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from redis.asyncio import Redis
from sqlalchemy import delete

from core import keys
from core.access import invalidate_access
from core.clock import utcnow
from core.models import Enrolment, WebSession
from tests.fixtures.router import Refused, RunningRouter, World, autobahn_session, close_autobahn, raw_wamp
from tests.integration.test_router import Inbox, emit


async def allowed(client: Any, topic: str) -> bool:
    try:
        subscription = await client.subscribe(Inbox(), topic)
    except ApplicationError as error:
        assert error.error == "wamp.error.not_authorized"
        return False
    await subscription.unsubscribe()
    return True


async def test_authorisation_matrix(wamp_router: RunningRouter, wamp_world: World) -> None:
    w = wamp_world
    student, classmate, outsider = await w.user("student"), await w.user("classmate"), await w.user("outsider")
    teacher, other_teacher, service = (
        await w.user("teacher"),
        await w.user("other-teacher"),
        await w.user("svc", service=True),
    )
    course, other_course = await w.course(), await w.course()
    for user in (student, classmate):
        await w.enrol(user, course)
    await w.enrol(outsider, other_course)
    await w.enrol(teacher, course, "staff")
    await w.enrol(other_teacher, other_course, "staff")
    assignment = await w.assignment(course)
    own = await w.submission(assignment, student)
    classmates = await w.submission(assignment, classmate)

    expectations = {
        student: {
            f"submission.{own}": True,
            f"submission.{classmates}": False,
            f"assignment.{assignment}": True,
            f"course.{course}": True,
            f"course.{other_course}": False,
            f"user.{student}": True,
            f"user.{classmate}": False,
            f"course.{course}.staff": False,
            "fleet": False,
        },
        outsider: {f"assignment.{assignment}": False, f"submission.{own}": False, f"course.{course}": False},
        teacher: {
            f"submission.{own}": True,
            f"submission.{classmates}": True,
            f"assignment.{assignment}": True,
            f"course.{course}.staff": True,
            f"course.{other_course}.staff": False,
            "fleet": True,
            f"user.{student}": False,
        },
        other_teacher: {
            f"submission.{own}": False,
            f"assignment.{assignment}": False,
            f"course.{course}.staff": False,
            f"course.{other_course}.staff": True,
            "fleet": True,
        },
        service: {f"submission.{own}": True, f"user.{student}": True, f"course.{course}.staff": True, "fleet": True},
    }
    for user, topics in expectations.items():
        client = await autobahn_session(wamp_router.url, await w.login(user))
        try:
            got = {topic: await allowed(client, topic) for topic in topics}
            assert got == topics, f"user {user}"
        finally:
            await close_autobahn(client)


async def test_enrolment_change_takes_effect_after_invalidation(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    student = await wamp_world.user("student")
    course = await wamp_world.course()
    assignment = await wamp_world.assignment(course)
    client = await autobahn_session(wamp_router.url, await wamp_world.login(student))
    try:
        assert not await allowed(client, f"assignment.{assignment}")
        await wamp_world.enrol(student, course)
        await invalidate_access(redis, student)
        await asyncio.sleep(0.2)  # the router hears it over pub/sub
        inbox = Inbox()
        await client.subscribe(inbox, f"assignment.{assignment}")
        await emit(sessions, redis, f"assignment.{assignment}", "deadline.changed", {})
        await inbox.next()
        # Unenrolled: the live subscription stops delivering.
        async with sessions() as db, db.begin():
            await db.execute(delete(Enrolment).where(Enrolment.user_id == student))
        await invalidate_access(redis, student)
        await asyncio.sleep(0.3)
        await emit(sessions, redis, f"assignment.{assignment}", "grades.released", {})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(inbox.items.get(), 0.5)
    finally:
        await close_autobahn(client)


async def refused_reason(wamp_router: RunningRouter, ticket: str) -> str:
    with pytest.raises(Refused) as refused:
        client = await autobahn_session(wamp_router.url, ticket)
        await close_autobahn(client)
    return refused.value.reason


async def test_expired_forged_and_garbage_tickets_are_refused(wamp_router: RunningRouter, wamp_world: World) -> None:
    user = await wamp_world.user()
    sid = await wamp_world.web_session(user)
    expired = wamp_world.ticket(user, sid, ttl=-5)
    forged = wamp_world.ticket(user, sid, secret="not-the-secret")
    body, mac = wamp_world.ticket(user, sid).split(".")
    tampered = f"{body[:-2]}xx.{mac}"
    for ticket in (expired, forged, tampered, "garbage", ""):
        assert await refused_reason(wamp_router, ticket) == "wamp.error.not_authorized", ticket


async def test_a_ticket_works_once(wamp_router: RunningRouter, wamp_world: World) -> None:
    user = await wamp_world.user()
    ticket = await wamp_world.login(user)
    client = await autobahn_session(wamp_router.url, ticket)
    await close_autobahn(client)
    assert await refused_reason(wamp_router, ticket) == "wamp.error.not_authorized"


async def test_a_ticket_replayed_on_many_sockets_at_once_is_accepted_on_one(
    wamp_router: RunningRouter, wamp_world: World
) -> None:
    # Handshakes arriving together share one Redis round trip; each use of the ticket is still its own.
    ticket = await wamp_world.login(await wamp_world.user())
    async with contextlib.AsyncExitStack() as stack:
        sockets = [await stack.enter_async_context(raw_wamp(wamp_router.url)) for _ in range(20)]
        replies = await asyncio.gather(*(socket.join(ticket) for socket in sockets))
    assert sorted(reply[0] for reply in replies) == [2] + [3] * 19, replies  # one WELCOME, 19 ABORTs


async def test_tickets_of_ended_web_sessions_are_refused(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any
) -> None:
    user = await wamp_world.user()
    expired_sid = await wamp_world.web_session(user, expires_in=-1)
    assert await refused_reason(wamp_router, wamp_world.ticket(user, expired_sid)) == "wamp.error.not_authorized"
    revoked_sid = await wamp_world.web_session(user)
    async with sessions() as db, db.begin():
        (await db.get(WebSession, revoked_sid)).revoked_at = utcnow()
    assert await refused_reason(wamp_router, wamp_world.ticket(user, revoked_sid)) == "wamp.error.not_authorized"
    other = await wamp_world.user()
    assert await refused_reason(wamp_router, wamp_world.ticket(other, revoked_sid)) == "wamp.error.not_authorized"


async def test_logout_ends_that_web_sessions_sockets_only(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    user = await wamp_world.user()
    sid = await wamp_world.web_session(user)
    tab_one = await autobahn_session(wamp_router.url, wamp_world.ticket(user, sid))
    tab_two = await autobahn_session(wamp_router.url, wamp_world.ticket(user, sid))
    other_device = await autobahn_session(wamp_router.url, await wamp_world.login(user))
    try:
        # What the api does on logout.
        async with sessions() as db, db.begin():
            (await db.get(WebSession, sid)).revoked_at = utcnow()
        await redis.set(keys.web_session_revoked(sid), "1", ex=3600)
        await redis.publish(keys.WEB_SESSION_REVOKED_CHANNEL, sid)
        for tab in (tab_one, tab_two):
            details = await asyncio.wait_for(asyncio.shield(tab.left), 5)
            assert details.reason == "wamp.close.logout"
            await asyncio.wait_for(asyncio.shield(tab.disconnected), 5)
        assert other_device.is_attached()
        assert await refused_reason(wamp_router, wamp_world.ticket(user, sid)) == "wamp.error.not_authorized"
    finally:
        await close_autobahn(other_device)
