"""Hostile and slow peers against a real router: it answers, drops, and keeps serving others."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from core.events import Envelope, publish
from core.settings import RouterSettings, Settings
from router.server import running_router
from tests.fixtures.router import RunningRouter, World, autobahn_session, close_autobahn, raw_wamp

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@contextlib.asynccontextmanager
async def router_with(settings: Settings, **limits: Any) -> AsyncIterator[RunningRouter]:
    tuned = settings.model_copy(update={"router": RouterSettings(**limits)})
    async with running_router(tuned, "127.0.0.1", 0) as (instance, server):
        port = next(iter(server.sockets)).getsockname()[1]
        yield RunningRouter(instance, f"ws://127.0.0.1:{port}/ws", port)


async def closed(raw: Any) -> bool:
    try:
        while True:
            await raw.recv()
    except ConnectionClosed:
        return True


@pytest.mark.parametrize(
    ("serializer", "frame"),
    [
        ("json", "{not json"),
        ("json", b"\x93\x01\x02\x03"),
        ("msgpack", "[1]"),
        ("msgpack", b"\xc1\xff\x00"),
        ("json", '[1, "handin", {"authmethods": ["ticket"]}]'),
        ("json", "[33, 1, 2]"),
        ("json", '[32, 1, {}, "submission.1"]'),
    ],
)
async def test_malformed_frames_get_abort_and_the_router_keeps_serving(
    serializer: str, frame: str | bytes, wamp_router: RunningRouter, wamp_world: World
) -> None:
    async with raw_wamp(wamp_router.url, serializer) as raw:
        await raw.connection.send(frame)
        abort = await raw.recv()
        assert abort[0] == 3 and abort[2] == "wamp.error.protocol_violation"
        assert await closed(raw)
    user = await wamp_world.user()
    async with raw_wamp(wamp_router.url, serializer) as raw:
        welcome = await raw.join(await wamp_world.login(user))
        assert welcome[0] == 2 and welcome[2]["authid"] == str(user)


async def test_oversized_frames_and_missing_subprotocol_close_the_socket(wamp_router: RunningRouter) -> None:
    async with raw_wamp(wamp_router.url, "json", max_size=None) as raw:
        await raw.connection.send("[" + "1," * 40_000 + "1]")
        assert await closed(raw)
        assert raw.connection.close_code == 1009
    with pytest.raises(InvalidStatus) as refused:
        async with connect(wamp_router.url):
            pass
    assert refused.value.response.status_code == 400


async def test_a_message_in_fragments_is_read_whole(wamp_router: RunningRouter, wamp_world: World) -> None:
    ticket = await wamp_world.login(await wamp_world.user())
    async with raw_wamp(wamp_router.url) as raw:
        hello = '[1, "handin", {"roles": {"subscriber": {}}, "authmethods": ["ticket"]}]'
        await raw.connection.send([hello[:5], hello[5:30], hello[30:]])  # one message, three frames
        assert (await raw.recv())[0] == 4  # CHALLENGE
        await raw.send([5, ticket, {}])
        assert (await raw.recv())[0] == 2  # WELCOME


async def test_a_text_frame_that_is_not_utf8_closes_the_socket_with_1007(wamp_router: RunningRouter) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", wamp_router.port)
    try:
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        writer.write(bytes([0x81, 0x80 | 2, 0, 0, 0, 0]) + b"\xff\xfe")  # FIN + text, masked (zero key)
        close = await asyncio.wait_for(reader.readexactly(4), 10)
        assert close[0] == 0x88 and int.from_bytes(close[2:4], "big") == 1007, close
    finally:
        writer.close()


async def test_a_peer_that_never_authenticates_is_aborted(settings: Settings, redis: Redis) -> None:
    async with router_with(settings, handshake_timeout_seconds=0.3) as running, raw_wamp(running.url) as raw:
        await raw.send([1, "handin", {"roles": {"subscriber": {}}, "authmethods": ["ticket"]}])
        assert (await raw.recv())[0] == 4
        abort = await raw.recv()
        assert abort[0] == 3 and abort[2] == "wamp.error.not_authorized"


async def test_healthz_and_metrics(
    wamp_router: RunningRouter, wamp_world: World, caplog: pytest.LogCaptureFixture
) -> None:
    client = await autobahn_session(wamp_router.url, await wamp_world.login(await wamp_world.user()))
    caplog.set_level(logging.INFO, logger="websockets.server")
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{wamp_router.port}") as http:
            health = await http.get("/healthz")
            assert health.status_code == 200 and health.text == "ok\n"
            metrics = await http.get("/metrics")
            assert metrics.status_code == 200
            assert "handin_router_sessions 1.0" in metrics.text
            assert "handin_router_events_out_total" in metrics.text
            assert (await http.get("/elsewhere")).status_code == 404
    finally:
        await close_autobahn(client)
    # Probes and scrapes are not logged as refused connections; what was refused still is.
    said = [record.getMessage() for record in caplog.records if record.name == "websockets.server"]
    assert said == ["connection rejected (404 Not Found)"]


async def test_an_opened_connection_is_not_a_log_line_of_its_own(
    wamp_router: RunningRouter, caplog: pytest.LogCaptureFixture
) -> None:
    """At the shipped INFO level websockets says "connection open" for each upgrade it answers: a
    line with no user and no address, thousands a second when a deadline's pages open. The router
    leaves it out. The request here comes with its first frame in the same write, so websockets,
    not the router's short path for a plain request alone, answers the upgrade."""
    caplog.set_level(logging.INFO, logger="websockets.server")
    reader, writer = await asyncio.open_connection("127.0.0.1", wamp_router.port)
    try:
        hello = b'[1,"handin",{"roles":{"subscriber":{}},"authmethods":["ticket"]}]'
        writer.write(
            b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
            b"Sec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
            + bytes([0x81, 0x80 | len(hello), 0, 0, 0, 0])  # FIN + text, masked with a zero key
            + hello
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101")
        challenge = await asyncio.wait_for(reader.readexactly(2), 10)
        assert challenge[0] == 0x81  # the router read the HELLO and answered it (CHALLENGE)
    finally:
        writer.close()
    said = [record.getMessage() for record in caplog.records if record.name == "websockets.server"]
    assert "connection open" not in said, said


async def test_slow_consumer_is_dropped_and_others_get_everything(
    settings: Settings, redis: Redis, wamp_world: World
) -> None:
    user = await wamp_world.user("svc", service=True)
    topic = f"user.{user}"
    async with router_with(settings, send_buffer_limit_bytes=64 * 1024) as running:
        # The slow peer: a tiny receive window, and it stops reading once subscribed.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", running.port))
        async with raw_wamp(running.url, sock=sock, max_queue=1) as slow, raw_wamp(running.url) as healthy:
            for raw in (slow, healthy):
                assert (await raw.join(await wamp_world.login(user)))[0] == 2
                assert (await raw.subscribe(topic))[0] == 33
            assert slow.connection.transport is not None
            slow.connection.transport.pause_reading()
            count, padding = 300, "x" * 10_000
            envelopes = [Envelope(i, topic, "tick", "now", {"pad": padding}) for i in range(1, count + 1)]
            received: list[int] = []

            async def read_all() -> None:
                while len(received) < count:
                    received.append((await healthy.recv())[4][0]["seq"])

            reader = asyncio.create_task(read_all())
            for start in range(0, count, 50):
                await publish(redis, envelopes[start : start + 50])
            await asyncio.wait_for(reader, 20)
            assert received == list(range(1, count + 1))
            assert running.router.metrics.slow_consumers._value.get() == 1
            slow.connection.transport.resume_reading()
            assert await asyncio.wait_for(closed(slow), 10)


async def test_a_peer_that_stops_answering_pings_is_closed(settings: Settings, redis: Redis, wamp_world: World) -> None:
    user = await wamp_world.user()
    async with router_with(settings, ping_interval_seconds=0.2, ping_timeout_seconds=0.3) as running:
        async with raw_wamp(running.url) as raw:
            assert (await raw.join(await wamp_world.login(user)))[0] == 2
            assert raw.connection.transport is not None
            raw.connection.transport.pause_reading()  # pings go unanswered from here on
            peer = next(iter(running.router.peers))
            await asyncio.wait_for(peer.gone.wait(), 5)
            assert running.router.peers == set()
            assert running.router.metrics.sessions._value.get() == 0
            raw.connection.transport.resume_reading()  # lets the client's own close finish quickly


async def test_the_bridge_resubscribes_after_losing_redis(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    from tests.integration.test_router import Inbox, emit

    student = await wamp_world.user()
    client = await autobahn_session(wamp_router.url, await wamp_world.login(student))
    try:
        inbox = Inbox()
        await client.subscribe(inbox, f"user.{student}")
        name = wamp_router.router.broker.client_name
        ours = [c["id"] for c in await redis.client_list() if c.get("name") == name]
        assert ours
        for client_id in ours:  # only this router's connection, never anybody else's
            await redis.client_kill_filter(_id=client_id)
        for _ in range(100):
            await emit(sessions, redis, f"user.{student}", "flash", {"text": "still there?"})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(inbox.items.get(), 0.1)
                break
        else:
            raise AssertionError("no event after Redis came back")
        reconnected = [c["id"] for c in await redis.client_list() if c.get("name") == name]
        assert reconnected and not set(reconnected) & set(ours)  # a new connection, resubscribed
    finally:
        await close_autobahn(client)
