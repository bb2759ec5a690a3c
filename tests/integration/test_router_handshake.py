"""Opening sessions without asking the database each time, and rights still following changes.

Statements are counted in the router's own engine (SQLAlchemy's ``before_cursor_execute``): the router
runs in the test's process and event loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import event, update

from core import keys
from core.clock import utcnow
from core.membership import remove_enrolment
from core.models import WebSession
from core.settings import Settings
from router.server import RIGHTS_CHANGED, Router, running_router
from tests.fixtures.router import RunningRouter, World, raw_wamp
from tests.integration.test_router_security import WAIT, with_router


@contextmanager
def statements(router: Router) -> Iterator[list[str]]:
    """Every SQL statement the router sends while the block runs."""
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.split(None, 1)[0].upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            seen.append(statement)

    event.listen(router.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(router.engine.sync_engine, "before_cursor_execute", record)


async def open_page(url: str, ticket: str, topics: list[str]) -> list[list[Any]]:
    """A page: join with its ticket, subscribe its topics, leave; the replies."""
    async with raw_wamp(url) as raw:
        replies = [await raw.join(ticket)]
        replies += [await raw.subscribe(topic, n) for n, topic in enumerate(topics, start=1)]
        return replies


async def test_the_next_page_view_opens_its_session_without_sql(wamp_router: RunningRouter, wamp_world: World) -> None:
    w = wamp_world
    student, course = await w.user("student"), await w.course()
    await w.enrol(student, course)
    assignment = await w.assignment(course)
    own = await w.submission(assignment, student)
    sid = await w.web_session(student)
    topics = [f"user.{student}", f"course.{course}", f"assignment.{assignment}", f"submission.{own}"]

    first = await open_page(wamp_router.url, w.ticket(student, sid), topics)
    assert [r[0] for r in first] == [2, 33, 33, 33, 33], first
    with statements(wamp_router.router) as sent:
        # The next page of the same browser: a new single-use ticket, the same web session.
        again = await open_page(wamp_router.url, w.ticket(student, sid), topics)
    assert [r[0] for r in again] == [2, 33, 33, 33, 33], again
    assert sent == []


async def test_browsers_arriving_together_share_their_statements(wamp_router: RunningRouter, wamp_world: World) -> None:
    w = wamp_world
    course = await w.course()
    assignment = await w.assignment(course)
    students = [await w.user(f"s{n}") for n in range(30)]
    for student in students:
        await w.enrol(student, course)
    tickets = [await w.login(student) for student in students]

    with statements(wamp_router.router) as sent:
        pages = await asyncio.gather(
            *(open_page(wamp_router.url, ticket, [f"assignment.{assignment}"]) for ticket in tickets)
        )
    assert all([r[0] for r in page] == [2, 33] for page in pages), pages
    # A look-up per session and kind would be 90 statements or more; batched, fewer than one per session.
    assert len(sent) < len(students), sent


async def test_an_enrolment_removed_through_handin_reaches_a_warm_router(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    w = wamp_world
    student, course = await w.user("student"), await w.course()
    await w.enrol(student, course)
    sid = await w.web_session(student)
    topic = keys.course_topic(course)
    assert [r[0] for r in await open_page(wamp_router.url, w.ticket(student, sid), [topic])] == [2, 33]

    async with raw_wamp(wamp_router.url) as raw:  # rights and web session now held by the router
        assert (await raw.join(w.ticket(student, sid)))[0] == 2
        assert (await raw.subscribe(topic))[0] == 33
        await remove_enrolment(sessions, redis, student, course)
        goodbye = await asyncio.wait_for(raw.recv(), WAIT)
        assert goodbye[0] == 6 and goodbye[2] == RIGHTS_CHANGED, goodbye

    joined, refused = await open_page(wamp_router.url, w.ticket(student, sid), [topic])
    assert joined[0] == 2
    assert refused[0] == 8 and refused[4] == "wamp.error.not_authorized", refused


async def test_a_web_session_ended_straight_in_the_database_is_refused_within_the_recheck(
    settings: Settings, redis: Redis, wamp_world: World, sessions: Any
) -> None:
    user = await wamp_world.user()
    sid = await wamp_world.web_session(user)
    async with running_router(with_router(settings, authz_recheck_seconds=0.5), "127.0.0.1", 0) as (_r, server):
        url = f"ws://127.0.0.1:{next(iter(server.sockets)).getsockname()[1]}/ws"
        assert (await open_page(url, wamp_world.ticket(user, sid), []))[0][0] == 2
        async with sessions() as db, db.begin():  # no logout through handin: nothing published
            await db.execute(update(WebSession).where(WebSession.id == sid).values(revoked_at=utcnow()))
        await refused_within(url, wamp_world, user, sid)


async def refused_within(url: str, w: World, user: int, sid: str) -> None:
    for _ in range(200):
        reply = (await open_page(url, w.ticket(user, sid), []))[0]
        if reply[0] == 3:
            assert reply[2] == "wamp.error.not_authorized", reply
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError("the ended web session was still accepted")


async def test_a_look_up_given_up_by_one_handshake_still_answers_the_others() -> None:
    from router.directory import Batcher

    release = asyncio.Event()

    async def load(keys: list[int]) -> dict[int, int]:
        await release.wait()
        return {key: key * 2 for key in keys}

    batcher: Batcher[int, int] = Batcher(load)
    impatient = asyncio.ensure_future(batcher.get(21))
    patient = asyncio.ensure_future(batcher.get(21))
    await asyncio.sleep(0)
    impatient.cancel()  # e.g. the periodic re-check's time limit
    release.set()
    assert await patient == 42
