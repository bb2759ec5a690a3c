"""A stalled authorisation look-up against a real router: the SUBSCRIBE is answered, never left hanging.

The stall is real: the test holds an ACCESS EXCLUSIVE lock on PostgreSQL's ``assignments`` table, so the
router's look-up of an assignment topic it has not seen yet (which course it belongs to) waits on the
database. (The user's course roles are loaded at the handshake, before the lock.) SQLite cannot stage
this: in WAL mode a writer never blocks readers, and no lock a second connection can take will
(exclusive locking mode needs every other connection gone first).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.settings import Settings
from router.server import running_router
from tests.fixtures.router import RunningRouter, World, raw_wamp

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

LIMIT_SECONDS = 0.5
UNAVAILABLE = "handin.error.unavailable"


@contextlib.asynccontextmanager
async def router_with_limit(settings: Settings) -> AsyncIterator[RunningRouter]:
    router_settings = settings.router.model_copy(update={"authz_timeout_seconds": LIMIT_SECONDS})
    async with running_router(settings.model_copy(update={"router": router_settings}), "127.0.0.1", 0) as (
        instance,
        server,
    ):
        port = next(iter(server.sockets)).getsockname()[1]
        yield RunningRouter(instance, f"ws://127.0.0.1:{port}/ws", port)


@contextlib.asynccontextmanager
async def assignments_locked(engine: AsyncEngine) -> AsyncIterator[None]:
    """Every read of assignments waits until this block ends."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        await connection.execute(text("LOCK TABLE assignments IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            await transaction.rollback()


async def test_a_stalled_authorisation_look_up_is_answered_with_an_error_and_logged(
    settings: Settings, redis: object, engine: AsyncEngine, wamp_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    student = await wamp_world.user("student")
    course = await wamp_world.course()
    await wamp_world.enrol(student, course)
    topic = f"assignment.{await wamp_world.assignment(course)}"
    caplog.set_level(logging.WARNING, logger="router")

    async with router_with_limit(settings) as router, raw_wamp(router.url) as raw:
        welcome = await raw.join(await wamp_world.login(student))
        assert welcome[0] == 2, welcome
        async with assignments_locked(engine):
            # raw.recv gives up after 5 s: without the limit the router would wait for the lock.
            error = await raw.subscribe(topic, request=1)
            assert error[:3] == [8, 32, 1] and error[4] == UNAVAILABLE, error
            assert "took too long" in error[5][0]
        logged = [r for r in caplog.records if r.getMessage() == "authorisation look-up timed out"]
        assert logged, [r.getMessage() for r in caplog.records]
        assert logged[0].topic == topic
        assert logged[0].seconds >= LIMIT_SECONDS
        # The lock gone, the same session subscribes as usual.
        subscribed = await raw.subscribe(topic, request=2)
        assert subscribed[:2] == [33, 2], subscribed
