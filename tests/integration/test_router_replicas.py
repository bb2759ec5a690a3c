"""Router replicas as real processes (`handin router`) on one Redis."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from autobahn.wamp.types import PublishOptions
from redis.asyncio import Redis

from core.settings import Settings
from tests.fixtures.router import World, autobahn_session, close_autobahn
from tests.integration.test_router import Inbox, emit

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_router(settings: Settings) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    env = {
        **os.environ,
        "HANDIN_DATABASE_URL": settings.database_url,
        "HANDIN_REDIS_URL": settings.redis_url,
        "HANDIN_SECRET_KEY": settings.secret_key,
        "HANDIN_LOG_JSON": "false",
        "HANDIN_ROUTER__SHUTDOWN_GRACE_SECONDS": "3",
    }
    command = [sys.executable, "-m", "core.cli", "router", "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.Popen(command, env=env, stderr=subprocess.PIPE), port


async def wait_healthy(port: int) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(200):
            try:
                if (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"router on {port} never became healthy")


@pytest.fixture
def two_routers(settings: Settings) -> Iterator[list[int]]:
    started = [start_router(settings) for _ in range(2)]
    yield [port for _process, port in started]
    for process, _port in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        assert process.stderr is not None
        process.stderr.close()


async def test_a_session_on_each_replica_receives_the_same_event(
    two_routers: list[int], wamp_world: World, sessions: Any, redis: Redis
) -> None:
    for port in two_routers:
        await wait_healthy(port)
    teacher = await wamp_world.user("teacher")
    course = await wamp_world.course()
    await wamp_world.enrol(teacher, course, "staff")
    topic = f"assignment.{await wamp_world.assignment(course)}"
    clients = [
        await autobahn_session(f"ws://127.0.0.1:{port}/ws", await wamp_world.login(teacher), serializer)
        for port, serializer in zip(two_routers, ["json", "msgpack"], strict=True)
    ]
    try:
        inboxes = [Inbox(), Inbox()]
        for client, inbox in zip(clients, inboxes, strict=True):
            await client.subscribe(inbox, topic)
        seq = await emit(sessions, redis, topic, "grades.released", {"count": 3})
        received = [await inbox.next() for inbox in inboxes]
        assert received[0] == received[1] and received[0]["seq"] == seq
        # A class message published on one replica reaches the other.
        await clients[0].publish(topic, "note", options=PublishOptions(acknowledge=True))
        assert (await inboxes[1].next())["data"]["args"] == ["note"]
    finally:
        for client in clients:
            await close_autobahn(client)


async def test_sigterm_says_goodbye_with_system_shutdown_and_exits(
    settings: Settings, wamp_world: World, redis: Redis
) -> None:
    process, port = start_router(settings)
    try:
        await wait_healthy(port)
        client = await autobahn_session(f"ws://127.0.0.1:{port}/ws", await wamp_world.login(await wamp_world.user()))
        process.send_signal(signal.SIGTERM)
        details = await asyncio.wait_for(asyncio.shield(client.left), 5)
        assert details.reason == "wamp.close.system_shutdown"
        assert await asyncio.to_thread(process.wait, 10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        assert process.stderr is not None
        process.stderr.close()
