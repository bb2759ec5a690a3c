"""Admission control, and coming back from trouble.

Past its bound of connections between accept and WELCOME the router stops accepting: later arrivals
wait in the kernel's listen queue and are taken in arrival order as sessions are welcomed, while the
health port goes on answering. Sessions refused after the upgrade (the ticket check's backend
unavailable) get an ABORT whose details carry ``retry_after``. When the router's Redis connection
drops, its sessions are told that events may have been missed (EVENT with details.gap).
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection, connect

from core.settings import Settings
from router.listener import waiting_to_be_accepted
from router.server import UNAVAILABLE, running_router
from tests.fixtures import conditions
from tests.fixtures.router import RawWamp, RunningRouter, World, raw_wamp
from tests.integration.test_router_security import WAIT, with_router


@asynccontextmanager
async def router(
    settings: Settings, health_port: int | None = None
) -> AsyncIterator[tuple[RunningRouter, socket.socket]]:
    async with running_router(settings, "127.0.0.1", 0, health_port) as (instance, server):
        listener = next(iter(server.sockets))
        port = listener.getsockname()[1]
        yield RunningRouter(instance, f"ws://127.0.0.1:{port}/ws", port), listener


async def until(check: Callable[[], Any], what: str) -> Any:
    return await conditions.until(check, what, WAIT, poll=0.02)


def arrive(url: str) -> asyncio.Task[ClientConnection]:
    """A browser's upgrade, in the background: it completes once the router accepts the connection."""

    async def opened() -> ClientConnection:
        return await connect(url, subprotocols=["wamp.2.json"], open_timeout=WAIT)  # type: ignore[list-item]

    return asyncio.create_task(opened())


async def test_past_the_bound_arrivals_wait_unrefused_and_come_in_as_sessions_are_welcomed(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    user = await wamp_world.user()
    async with router(with_router(settings, max_handshakes_in_flight=1)) as (running, listener):
        async with raw_wamp(running.url) as held:  # upgraded, no HELLO yet: a handshake in progress
            second = arrive(running.url)
            await until(lambda: waiting_to_be_accepted(listener) == 1, "the second arrival to queue in the kernel")
            third = arrive(running.url)
            await until(lambda: waiting_to_be_accepted(listener) == 2, "the third arrival to queue behind it")
            assert not second.done() and not third.done()  # neither accepted nor refused
            assert running.router.gate.inside == 1

            assert (await held.join(await wamp_world.login(user)))[0] == 2  # welcomed: room for one more
            connection = await asyncio.wait_for(second, WAIT)
            try:
                await until(lambda: waiting_to_be_accepted(listener) == 1, "the second to be taken from the queue")
                assert not third.done()  # one place: the second took it, in arrival order
                assert (await RawWamp(connection, "json").join(await wamp_world.login(user)))[0] == 2
                later = await asyncio.wait_for(third, WAIT)
                assert (await RawWamp(later, "json").join(await wamp_world.login(user)))[0] == 2
                await later.close()
            finally:
                await connection.close()


async def test_a_connection_that_never_finishes_its_handshake_gives_its_place_up(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    user = await wamp_world.user()
    limits = {"max_handshakes_in_flight": 1, "handshake_timeout_seconds": 0.5}
    async with router(with_router(settings, **limits)) as (running, _listener):
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)  # says nothing at all
        try:
            await until(lambda: running.router.gate.inside == 1, "the silent connection to be accepted")
            waiting = arrive(running.url)
            assert await asyncio.wait_for(reader.read(), WAIT) == b""  # closed by the router
            connection = await asyncio.wait_for(waiting, WAIT)
            assert (await RawWamp(connection, "json").join(await wamp_world.login(user)))[0] == 2
            await connection.close()
        finally:
            writer.close()


async def test_probes_are_answered_on_the_health_port_while_arrivals_wait(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    async with router(with_router(settings, max_handshakes_in_flight=1), health_port=0) as (running, listener):
        assert running.router.probes is not None
        health = next(iter(running.router.probes.sockets)).getsockname()[1]
        async with raw_wamp(running.url):
            waiting = arrive(running.url)
            await until(lambda: waiting_to_be_accepted(listener) == 1, "an arrival to queue in the kernel")
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{health}", timeout=WAIT) as client:
                assert (await client.get("/healthz")).text == "ok\n"
                metrics = (await client.get("/metrics")).text
                elsewhere = await client.get("/ws")
            assert "handin_router_accepting 0.0" in metrics
            assert "handin_router_handshakes_in_flight 1.0" in metrics
            assert "handin_router_waiting_to_be_accepted 1.0" in metrics
            assert elsewhere.status_code == 404 and "/healthz and /metrics" in elsewhere.text
            assert not waiting.done()
        (await asyncio.wait_for(waiting, WAIT)).transport.abort()  # the held one left: room again


async def test_a_session_refused_for_an_unavailable_backend_gets_a_retry_hint(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    user = await wamp_world.user()
    ticket = await wamp_world.login(user)
    async with router(with_router(settings, busy_retry_after_seconds=4)) as (running, _listener):
        working = running.router.tickets.redis
        running.router.tickets.redis = Redis.from_url("redis://127.0.0.1:1")  # nothing listens there
        try:
            async with raw_wamp(running.url) as raw:
                abort = await raw.join(ticket)
        finally:
            await running.router.tickets.redis.aclose()
            running.router.tickets.redis = working
    assert abort[0] == 3 and abort[2] == UNAVAILABLE, abort
    assert abort[1]["retry_after"] == 4


async def test_a_router_started_while_its_database_is_down_serves_and_asks_browsers_to_come_back(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    """The router opens its database connections before taking browsers; a database that is down
    then must not keep it from starting (it is needed only for sessions not yet held)."""
    user = await wamp_world.user()
    ticket = await wamp_world.login(user)
    down = with_router(settings, busy_retry_after_seconds=3, authz_timeout_seconds=2)
    down = down.model_copy(update={"database_url": "postgresql+asyncpg://handin@127.0.0.1:1/handin"})
    async with router(down) as (running, _listener), raw_wamp(running.url) as raw:
        abort = await raw.join(ticket)
    assert abort[0] == 3 and abort[2] == UNAVAILABLE, abort
    assert abort[1]["retry_after"] == 3


async def test_sessions_are_told_to_catch_up_when_the_router_loses_redis(
    wamp_router: RunningRouter, wamp_world: World, redis: Redis
) -> None:
    user = await wamp_world.user()
    topic = f"user.{user}"
    async with raw_wamp(wamp_router.url) as raw:
        assert (await raw.join(await wamp_world.login(user)))[0] == 2
        subscribed = await raw.subscribe(topic)
        assert subscribed[0] == 33
        name = wamp_router.router.broker.client_name
        ours = [c["id"] for c in await redis.client_list() if c.get("name") == name]
        assert ours
        for client_id in ours:  # only this router's pub/sub connection
            await redis.client_kill_filter(_id=client_id)
        deadline = time.monotonic() + WAIT
        while True:
            message = await asyncio.wait_for(raw.recv(), max(0.1, deadline - time.monotonic()))
            if message[0] == 36:
                break
        assert message[1] == subscribed[2] and message[3] == {"gap": True}, message
        assert message[4][0]["topic"] == topic and "seq" not in message[4][0], message
