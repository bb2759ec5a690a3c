"""Logging in and out, who am I, WebSocket tickets, and the health probes."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.deps import SESSION_COOKIE
from api.main import create_app
from core import keys
from core.auth import read_ws_ticket
from core.models import WebSession
from core.settings import Settings
from tests.fixtures.app import PASSWORD, World, login, same_origin
from tests.fixtures.conditions import subscribed
from tests.fixtures.pipeline import step_states


async def test_login_me_logout(client: httpx.AsyncClient, world: World) -> None:
    assert (await client.get("/api/me")).status_code == 401
    answer = await client.post("/api/login", json={"email": World.email("student"), "password": PASSWORD})
    assert answer.status_code == 200
    set_cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in set_cookie and "samesite=lax" in set_cookie
    me = (await client.get("/api/me")).json()
    assert me["email"] == World.email("student")
    assert me["courses"] == [{"id": world.course_id, "code": "CS101", "title": "Systems", "role": "student"}]
    assert (await client.post("/api/logout")).status_code == 200
    assert (await client.get("/api/me")).status_code == 401


async def test_wrong_password_and_unknown_email_are_refused_plainly(client: httpx.AsyncClient, world: World) -> None:
    for email, password in ((World.email("student"), "nope"), ("nobody@test.handin", PASSWORD)):
        answer = await client.post("/api/login", json={"email": email, "password": password})
        assert answer.status_code == 401
        assert answer.json() == {"detail": "Wrong email address or password."}
        assert SESSION_COOKIE not in answer.cookies


async def test_html_form_login_redirects_locally(client: httpx.AsyncClient, world: World) -> None:
    answer = await client.post(
        "/api/login", data={"email": World.email("staff"), "password": PASSWORD, "next": "//evil.example/"}
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    assert (await client.get("/api/me")).json()["email"] == World.email("staff")


async def test_logout_revokes_the_session_everywhere(
    app: FastAPI, world: World, redis: Redis, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://handin.test", event_hooks=same_origin(settings)
    ) as http:
        await http.post("/api/login", json={"email": World.email("student"), "password": PASSWORD})
        stolen_cookie = http.cookies[SESSION_COOKIE]
        async with sessions() as session:
            session_id = (await session.scalars(select(WebSession.id))).one()
        pubsub = await subscribed(redis, keys.WEB_SESSION_REVOKED_CHANNEL)
        assert (await http.post("/api/logout")).status_code == 200
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
        await pubsub.aclose()
    assert message is not None and message["data"].decode() == session_id
    ttl = await redis.ttl(keys.web_session_revoked(session_id))
    assert 0 < ttl <= settings.session_max_age_seconds
    async with sessions() as session:
        assert (await session.get(WebSession, session_id)).revoked_at is not None  # type: ignore[union-attr]
    # The old cookie, replayed after logout, no longer works.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://handin.test", cookies={SESSION_COOKIE: stolen_cookie}
    ) as replay:
        assert (await replay.get("/api/me")).status_code == 401


async def test_forged_cookie_is_not_a_session(client: httpx.AsyncClient, world: World) -> None:
    client.cookies.set(SESSION_COOKIE, "eyJzaWQiOiJ4In0.forged")
    assert (await client.get("/api/me")).status_code == 401


async def test_ws_ticket(client: httpx.AsyncClient, world: World, settings: Settings) -> None:
    assert (await client.get("/api/ws-ticket")).status_code == 401
    await client.post("/api/login", json={"email": World.email("student"), "password": PASSWORD})
    body = (await client.get("/api/ws-ticket")).json()
    assert body["expires_in"] == settings.ws_ticket_ttl_seconds
    assert body["router_url"] == settings.router_url
    ticket = read_ws_ticket(body["ticket"], settings.secret_key)
    assert ticket.user_id == world.users["student"]


async def test_health_ready_and_metrics(client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}
    text = (await client.get("/metrics")).text
    assert 'handin_http_requests_total{method="GET",route="/readyz",status="200"}' in text


async def test_without_redis_the_api_starts_reports_not_ready_and_still_takes_uploads(
    settings: Settings, world: World, sessions: Any
) -> None:
    """Nothing listens on port 1: the app starts anyway, /readyz names Redis,
    and an upload is kept with its first step queued in the database for the
    reconciler to hand to Redis when it is back."""
    broken = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    app = create_app(broken)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://handin.test", event_hooks=same_origin(settings)
        ) as http:
            assert (await http.get("/healthz")).status_code == 200
            answer = await asyncio.wait_for(http.get("/readyz"), 10)
            assert answer.status_code == 503
            assert answer.json()["detail"] == "not ready: redis unreachable"
            assert answer.json()["checks"]["database"] == "ok"
            await login(http, "student")
            upload = await http.post(
                f"/api/assignments/{world.assignment_id}/submissions", files={"file": ("essay.txt", b"kept\n" * 50)}
            )
    assert upload.status_code == 202, upload.text
    assert (await step_states(sessions, upload.json()["id"]))["scan"] == "queued"
