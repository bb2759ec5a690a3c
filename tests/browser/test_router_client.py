"""api/static/js/wamp.js in headless Chromium against the real router.

The two api endpoints the module calls (GET /api/ws-ticket and the gap fetch
GET /api/topics/{topic}/events?after=N) are served here by a few lines of
FastAPI that follow the api's contract, reading the same database, so the
module is tested on its own; the pages' own browser tests use the real api.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import FileResponse, HTMLResponse
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.events import events_after
from tests.fixtures.chromium import CHROMIUM, CHROMIUM_ARGS
from tests.fixtures.router import RunningRouter, World
from tests.integration.test_router import emit

pytestmark = [
    pytest.mark.browser,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
    pytest.mark.skipif(shutil.which("chromium") is None, reason="needs /usr/bin/chromium"),
]

STATIC = Path(__file__).resolve().parents[2] / "api" / "static" / "js" / "wamp.js"
PAGE = """<!doctype html><meta charset="utf-8"><title>wamp.js</title>
<script type="module">
import { HandinWamp } from '/static/js/wamp.js';
window.seqs = []; window.states = [];
const client = new HandinWamp({ ticketUrl: '/api/ws-ticket', initialDelayMs: 50, maxDelayMs: 200 });
client.onStatus((s) => window.states.push(s.state));
client.subscribe(TOPIC, 1, (envelope) => window.seqs.push(envelope.seq));
window.client = client;
</script>"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.asynccontextmanager
async def contract_api(
    world: World, sessions: async_sessionmaker[AsyncSession], user: int, router_url: str, topic: str
) -> AsyncIterator[str]:
    app = FastAPI()
    tickets: list[str] = []

    @app.get("/page", response_class=HTMLResponse)
    async def page() -> str:
        return PAGE.replace("TOPIC", repr(topic))

    @app.get("/static/js/wamp.js")
    async def module() -> FileResponse:
        return FileResponse(STATIC, media_type="text/javascript")

    @app.get("/api/ws-ticket")
    async def ticket() -> dict[str, Any]:
        tickets.append(await world.login(user))
        return {"ticket": tickets[-1], "expires_in": 60, "router_url": router_url}

    @app.get("/api/topics/{name}/events")
    async def events(name: str, after: int = 0) -> dict[str, Any]:
        async with sessions() as db:
            return {"topic": name, "events": [e.as_dict() for e in await events_after(db, name, after)]}

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    for _ in range(500):  # uvicorn offers no event for "listening"
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


async def test_gap_fetch_live_events_and_reconnect_without_gaps_or_repeats(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    from playwright.async_api import async_playwright

    student = await wamp_world.user("student")
    course = await wamp_world.course()
    await wamp_world.enrol(student, course)
    topic = f"submission.{await wamp_world.submission(await wamp_world.assignment(course), student)}"
    # The page rendered at seq 1; seq 2 happened before it subscribed.
    await emit(sessions, redis, topic, "step.succeeded", {"step": "scan"})
    await emit(sessions, redis, topic, "step.succeeded", {"step": "store"})

    async with contract_api(wamp_world, sessions, student, wamp_router.url, topic) as base, async_playwright() as pw:
        wamp_router.router.allowed_origins |= {base}  # the page's port is picked now: allow its origin
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            page.on("console", lambda message: print("console:", message.text))
            page.on("pageerror", lambda error: print("pageerror:", error))
            await page.goto(f"{base}/page")
            await page.wait_for_function("window.seqs.length === 1", timeout=10_000)
            await emit(sessions, redis, topic, "step.succeeded", {"step": "similarity"})
            await page.wait_for_function("window.seqs.length === 2", timeout=10_000)

            # The router drops the socket; an event happens while the page is away.
            for peer in list(wamp_router.router.peers):
                peer.connection.transport.abort()
            await page.wait_for_function("window.states.includes('reconnecting')", timeout=10_000)
            await emit(sessions, redis, topic, "step.succeeded", {"step": "receipt"})
            await page.wait_for_function("window.client.state === 'open' && window.seqs.length === 3", timeout=10_000)
            await emit(sessions, redis, topic, "submission.completed", {})
            await page.wait_for_function("window.seqs.length === 4", timeout=10_000)
            await asyncio.sleep(0.2)  # nothing further (no repeats) arrives
            assert await page.evaluate("window.seqs") == [2, 3, 4, 5]
        finally:
            await browser.close()


async def test_the_page_catches_up_at_once_when_the_router_lost_redis(
    wamp_router: RunningRouter, wamp_world: World, sessions: Any, redis: Redis
) -> None:
    from playwright.async_api import async_playwright

    from core.db import transaction
    from core.events import EventBatch

    student = await wamp_world.user("student")
    topic = f"user.{student}"
    await emit(sessions, redis, topic, "flash", {"text": "rendered with the page"})  # seq 1
    async with contract_api(wamp_world, sessions, student, wamp_router.url, topic) as base, async_playwright() as pw:
        wamp_router.router.allowed_origins |= {base}
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{base}/page")
            await page.wait_for_function("window.client.state === 'open'", timeout=10_000)
            await emit(sessions, redis, topic, "flash", {"text": "live"})
            await page.wait_for_function("window.seqs.length === 1", timeout=10_000)
            # An event whose publish was lost while the router's Redis connection was down.
            async with transaction(sessions) as db:
                await EventBatch(db).emit(topic, "flash", {"text": "missed"})
            name = wamp_router.router.broker.client_name
            for client in await redis.client_list():
                if client.get("name") == name:
                    await redis.client_kill_filter(_id=client["id"])
            # No later live event shows a jump in seq: the router's gap signal alone brings it.
            await page.wait_for_function("window.seqs.length === 2", timeout=15_000)
            assert await page.evaluate("window.seqs") == [2, 3]
        finally:
            await browser.close()
