"""The router against abuse and stale rights, through real routers and real WAMP sessions.

Rights follow changes (through handin's own change path within seconds, straight in the
database within the periodic re-check), per-course staff topics, caps on sessions and
subscriptions, a bounded authorisation cache, canonical topic names, the Origin allow-list.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from autobahn.wamp.exception import ApplicationError
from redis.asyncio import Redis
from sqlalchemy import delete
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from core import keys
from core.membership import remove_enrolment, set_enrolment
from core.models import Enrolment
from core.settings import Settings
from router.server import RIGHTS_CHANGED, TOO_MANY_SESSIONS, TOO_MANY_SUBSCRIPTIONS, running_router
from tests.fixtures.router import RunningRouter, World, autobahn_session, close_autobahn, raw_wamp
from tests.integration.test_router import Inbox, emit

WAIT = 15  # upper bound on waiting for a condition; never an assertion about speed


def with_router(settings: Settings, **limits: Any) -> Settings:
    return settings.model_copy(update={"router": settings.router.model_copy(update=limits)})


@pytest.fixture
async def make_router(redis: Redis) -> AsyncIterator[Callable[..., Any]]:
    """Start routers with their own limits; all stopped at the end of the test."""
    stack: list[Any] = []

    async def start(settings: Settings) -> RunningRouter:
        context = running_router(settings, "127.0.0.1", 0)
        instance, server = await context.__aenter__()
        stack.append(context)
        port = next(iter(server.sockets)).getsockname()[1]
        return RunningRouter(instance, f"ws://127.0.0.1:{port}/ws", port)

    yield start
    for context in reversed(stack):
        await context.__aexit__(None, None, None)


async def staff_of_two_courses(w: World) -> tuple[int, int, int]:
    teacher, course, other = await w.user("teacher"), await w.course(), await w.course()
    await w.enrol(teacher, course, "staff")
    await w.enrol(teacher, other, "staff")
    return teacher, course, other


async def refused_subscription(client: Any, topic: str) -> str:
    with pytest.raises(ApplicationError) as refused:
        await client.subscribe(Inbox(), topic)
    return str(refused.value.error)


# Rights follow changes -----------------------------------------------------------------------


async def test_staff_removed_through_handin_stop_hearing_that_course_at_once(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    teacher, course, kept = await staff_of_two_courses(wamp_world)
    client = await autobahn_session(wamp_router.url, await wamp_world.login(teacher))
    try:
        inbox = Inbox()
        await client.subscribe(inbox, keys.course_staff_topic(course))
        await emit(sessions, redis, keys.course_staff_topic(course), "submission.arrived", {"submission_id": 1})
        assert (await inbox.next())["type"] == "submission.arrived"

        await remove_enrolment(sessions, redis, teacher, course)

        # The session is told why (autobahn copes with it: an ordinary GOODBYE) and hears nothing more.
        left = await asyncio.wait_for(asyncio.shield(client.left), WAIT)
        assert left.reason == RIGHTS_CHANGED
        assert keys.course_staff_topic(course) in (left.message or "")
        await emit(sessions, redis, keys.course_staff_topic(course), "submission.arrived", {"submission_id": 2})
        assert inbox.items.empty()
    finally:
        await close_autobahn(client)
    again = await autobahn_session(wamp_router.url, await wamp_world.login(teacher))
    try:
        assert await refused_subscription(again, keys.course_staff_topic(course)) == "wamp.error.not_authorized"
        await again.subscribe(Inbox(), keys.course_staff_topic(kept))  # the course they still teach
    finally:
        await close_autobahn(again)


async def test_a_row_deleted_straight_in_the_database_is_caught_by_the_periodic_recheck(
    make_router: Any, settings: Settings, wamp_world: World, sessions: Any
) -> None:
    router = await make_router(with_router(settings, authz_recheck_seconds=0.5, authz_cache_seconds=60))
    teacher, course, _ = await staff_of_two_courses(wamp_world)
    async with raw_wamp(router.url) as raw:
        assert (await raw.join(await wamp_world.login(teacher)))[0] == 2
        assert (await raw.subscribe(keys.course_staff_topic(course)))[0] == 33
        # An admin-system sync job: no invalidation is published.
        async with sessions() as db, db.begin():
            await db.execute(delete(Enrolment).where(Enrolment.user_id == teacher, Enrolment.course_id == course))
        goodbye = await asyncio.wait_for(raw.recv(), WAIT)
        assert goodbye[0] == 6 and goodbye[2] == RIGHTS_CHANGED, goodbye
    async with raw_wamp(router.url) as raw:
        assert (await raw.join(await wamp_world.login(teacher)))[0] == 2
        refusal = await raw.subscribe(keys.course_staff_topic(course))
        assert refusal[0] == 8 and refusal[4] == "wamp.error.not_authorized", refusal


async def test_a_user_given_rights_through_handin_may_subscribe_at_once(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    student, course = await wamp_world.user("student"), await wamp_world.course()
    client = await autobahn_session(wamp_router.url, await wamp_world.login(student))
    try:
        topic = keys.course_topic(course)
        assert await refused_subscription(client, topic) == "wamp.error.not_authorized"  # now cached as "no"
        await set_enrolment(sessions, redis, student, course, "student")
        for _ in range(100):  # the invalidation travels over Redis pub/sub: wait for it, not a fixed time
            try:
                await client.subscribe(Inbox(), topic)
                break
            except ApplicationError:
                await asyncio.sleep(0.05)
        else:
            pytest.fail("the new enrolment never reached the router")
    finally:
        await close_autobahn(client)


# Caps, the cache bound, canonical names -----------------------------------------------------


async def test_sessions_per_user_are_capped(make_router: Any, settings: Settings, wamp_world: World) -> None:
    router = await make_router(with_router(settings, max_sessions_per_user=2))
    user = await wamp_world.user()
    async with raw_wamp(router.url) as one, raw_wamp(router.url) as two, raw_wamp(router.url) as three:
        assert (await one.join(await wamp_world.login(user)))[0] == 2
        assert (await two.join(await wamp_world.login(user)))[0] == 2
        abort = await three.join(await wamp_world.login(user))
        assert abort[0] == 3 and abort[2] == TOO_MANY_SESSIONS, abort
        assert "2 open sessions" in abort[1]["message"]
    # Once those closed, the user may connect again.
    async with raw_wamp(router.url) as four:
        for _ in range(100):
            if not router.router.by_user.get(user):
                break
            await asyncio.sleep(0.05)
        assert (await four.join(await wamp_world.login(user)))[0] == 2


async def test_subscriptions_per_session_are_capped_and_the_cache_is_bounded(
    make_router: Any, settings: Settings, wamp_world: World
) -> None:
    router = await make_router(with_router(settings, max_subscriptions_per_session=3, authz_cache_entries=5))
    user = await wamp_world.user()
    async with raw_wamp(router.url) as raw:
        assert (await raw.join(await wamp_world.login(user)))[0] == 2
        assert (await raw.subscribe(f"user.{user}"))[0] == 33
        answers = [await raw.subscribe(f"course.{n}", 100 + n) for n in range(3, 30)]
        # One granted topic plus refusals: the cap counts subscriptions held, not requests made.
        assert all(a[0] == 8 and a[4] == "wamp.error.not_authorized" for a in answers)
        assert len(router.router.authorizer) <= 5
    user2 = await wamp_world.user()
    course = await wamp_world.course()
    await wamp_world.enrol(user2, course, "staff")
    async with raw_wamp(router.url) as raw:
        assert (await raw.join(await wamp_world.login(user2)))[0] == 2
        topics = [f"user.{user2}", f"course.{course}", f"course.{course}.staff", "fleet"]
        replies = [await raw.subscribe(topic, n) for n, topic in enumerate(topics, start=1)]
        assert [r[0] for r in replies[:3]] == [33, 33, 33]
        assert replies[3][0] == 8 and replies[3][4] == TOO_MANY_SUBSCRIPTIONS, replies[3]


@pytest.mark.parametrize("alias", ["submission.02", "submission.+2", "course.007.staff", "user.2.staff"])
async def test_non_canonical_topic_names_are_refused_clearly(
    wamp_router: RunningRouter, wamp_world: World, alias: str
) -> None:
    student = await wamp_world.user()
    async with raw_wamp(wamp_router.url) as raw:
        assert (await raw.join(await wamp_world.login(student)))[0] == 2
        refusal = await raw.subscribe(alias)
        assert refusal[0] == 8 and refusal[4] == "wamp.error.invalid_uri", refusal
        await raw.send([16, 2, {"acknowledge": True}, alias, ["hi"]])
        refusal = await raw.recv()
        assert refusal[0] == 8 and refusal[4] == "wamp.error.invalid_uri", refusal


# Origin ------------------------------------------------------------------------------------


async def test_a_foreign_origin_is_refused_at_the_upgrade(
    wamp_router: RunningRouter, wamp_world: World, settings: Settings
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(wamp_router.url, subprotocols=["wamp.2.json"], origin="https://evil.example"):  # type: ignore[list-item, arg-type]
            pass
    assert refused.value.response.status_code == 403
    # A sibling port on the same host is another origin too.
    with pytest.raises(InvalidStatus):
        async with connect(wamp_router.url, subprotocols=["wamp.2.json"], origin="http://127.0.0.1:8001"):  # type: ignore[list-item, arg-type]
            pass
    # The public URL's own origin (default allow-list) and clients that are not browsers get in.
    user = await wamp_world.user()
    origin = settings.public_url.rstrip("/")
    async with raw_wamp(wamp_router.url, origin=origin) as raw:
        assert (await raw.join(await wamp_world.login(user)))[0] == 2
    async with raw_wamp(wamp_router.url) as raw:
        assert (await raw.join(await wamp_world.login(user)))[0] == 2


async def test_the_origin_allow_list_is_configurable(make_router: Any, settings: Settings) -> None:
    router = await make_router(with_router(settings, allowed_origins=["https://handin.example.edu"]))
    async with connect(router.url, subprotocols=["wamp.2.json"], origin="https://HANDIN.example.edu:443"):  # type: ignore[list-item, arg-type]
        pass
    with pytest.raises(InvalidStatus) as refused:
        async with connect(router.url, subprotocols=["wamp.2.json"], origin=settings.public_url):  # type: ignore[list-item, arg-type]
            pass
    assert refused.value.response.status_code == 403
