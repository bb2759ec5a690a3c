"""Admission control, and coming back from trouble.

Past its bound of handshakes in progress the router says "not now" at once. A browser cannot read an
HTTP status from a failed WebSocket, so sessions refused after the upgrade (the ticket check's backend
unavailable) get an ABORT whose details carry ``retry_after``. When the router's Redis connection
drops, its sessions are told that events may have been missed (EVENT with details.gap).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace

import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from core.settings import Settings
from router.server import UNAVAILABLE, running_router
from tests.fixtures.router import RunningRouter, World, raw_wamp
from tests.integration.test_router_security import WAIT, with_router


@asynccontextmanager
async def router(settings: Settings) -> AsyncIterator[RunningRouter]:
    async with running_router(settings, "127.0.0.1", 0) as (instance, server):
        port = next(iter(server.sockets)).getsockname()[1]
        yield RunningRouter(instance, f"ws://127.0.0.1:{port}/ws", port)


async def test_past_the_handshake_bound_an_upgrade_gets_503_with_retry_after(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    user = await wamp_world.user()
    async with router(with_router(settings, max_handshakes_in_flight=1, busy_retry_after_seconds=3)) as running:
        async with raw_wamp(running.url) as held:  # upgraded, no HELLO yet: a handshake in progress
            with pytest.raises(InvalidStatus) as refused:
                async with connect(running.url, subprotocols=["wamp.2.json"]):  # type: ignore[list-item]
                    pass
            assert refused.value.response.status_code == 503
            assert refused.value.response.headers["Retry-After"] == "3"
            assert (await held.join(await wamp_world.login(user)))[0] == 2  # welcomed: no longer counted
            async with raw_wamp(running.url) as next_one:
                assert (await next_one.join(await wamp_world.login(user)))[0] == 2


async def test_refused_clients_are_told_to_come_back_at_different_times(
    settings: Settings, redis: Redis, wamp_world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every refusal at one instant, as in a storm, however slowly this machine serves them: the
    # admission clock stands still (the event loop's own clock does not).
    monkeypatch.setattr("router.admission.time", SimpleNamespace(monotonic=lambda: 1000.0))
    limits = {"max_handshakes_in_flight": 1, "busy_retry_after_seconds": 1, "handshake_timeout_seconds": 300}
    async with router(with_router(settings, **limits)) as running:
        async with raw_wamp(running.url):  # the one handshake allowed, held open however long 300 refusals take
            hints = []
            for _ in range(300):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(running.url, subprotocols=["wamp.2.json"]):  # type: ignore[list-item]
                        pass
                hints.append(int(refused.value.response.headers["Retry-After"]))
    # A storm told to come back all at once would come back as a storm: slots, in order, no second
    # given to more clients than the router welcomes in one (100/s assumed at start, 1.5x headroom).
    assert hints == sorted(hints) and hints[0] == 1 and hints[-1] == 3, hints
    assert max(Counter(hints).values()) <= 151, Counter(hints)


async def test_a_session_refused_for_an_unavailable_backend_gets_a_retry_hint(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    user = await wamp_world.user()
    ticket = await wamp_world.login(user)
    async with router(with_router(settings, busy_retry_after_seconds=4)) as running:
        working = running.router.redis
        running.router.redis = Redis.from_url("redis://127.0.0.1:1")  # nothing listens there
        try:
            async with raw_wamp(running.url) as raw:
                abort = await raw.join(ticket)
        finally:
            await running.router.redis.aclose()
            running.router.redis = working
    assert abort[0] == 3 and abort[2] == UNAVAILABLE, abort
    assert abort[1]["retry_after"] == 4


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
