"""The api against forged requests and cheap denial of service: CSRF, body limits, headers, settings, internal port."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.main import create_app
from core.models import Assignment, Submission, WebSession
from core.settings import Settings
from tests.fixtures.app import PASSWORD, World, same_origin
from tests.fixtures.receipt_keys import receipt_signing_keys
from tests.services import free_port

STRONG = "k3Jr9Qw-ZbX2mT7vN0pLs8Yd4Hf6Gc1Ae5Ru"
SIBLINGS = ["http://127.0.0.1:8001", "http://evil.127.0.0.1:8000", "https://127.0.0.1:8000", "null"]
Login = Any


# --- production settings -------------------------------------------------------------------------


def production(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "environment": "production",
        "secret_key": STRONG,
        "admin": {"secret": STRONG[::-1]},
        "similarity": {"webhook_secret": STRONG.upper()},
        "public_url": "https://handin.example.edu",
        "receipts": {"signing_keys": receipt_signing_keys()},
    }
    values.update(overrides)
    return Settings(**values)


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("", "0 characters, at least 32"),
        ("x", "1 characters, at least 32"),
        ("a" * 64, "only 1 distinct characters"),
        ("abab" * 16, "only 2 distinct characters"),
        ("changeme", "a known default"),
        ("dev-only-secret-change-me-but-longer-than-32", "a known default"),
    ],
)
def test_production_refuses_weak_secrets(secret: str, reason: str) -> None:
    with pytest.raises(ValidationError) as refused:
        production(secret_key=secret)
    assert "HANDIN_SECRET_KEY" in str(refused.value) and reason in str(refused.value)


def test_production_refuses_a_public_url_without_https() -> None:
    with pytest.raises(ValidationError, match="HANDIN_PUBLIC_URL must be https://"):
        production(public_url="http://handin.example.edu")
    assert production().public_url == "https://handin.example.edu"
    assert Settings(secret_key="x").environment == "development"  # development keeps its defaults


@pytest.mark.parametrize("component", ["all", "api", "receipt-worker"])
def test_production_refuses_the_receipt_signers_without_a_receipt_key(component: str) -> None:
    with pytest.raises(ValidationError, match="HANDIN_RECEIPTS__SIGNING_KEYS"):
        production(component=component, receipts={})
    assert production(component=component).receipts.configured
    for other in ("router", "worker", "autoscaler"):
        assert not production(component=other, receipts={}).receipts.configured


# --- CSRF ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", SIBLINGS)
async def test_sibling_origins_cannot_change_anything(
    as_user: Login, world: World, origin: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    student, staff = await as_user("student"), await as_user("staff")
    forged = {"Origin": origin}
    upload = await student.post(
        f"/api/assignments/{world.assignment_id}/submissions",
        files={"file": ("essay.txt", b"forged essay\n", "text/plain")},
        headers=forged,
    )
    edit = await staff.post(f"/staff/assignments/{world.assignment_id}/edit", data={"title": "Forged"}, headers=forged)
    release = await staff.post(f"/api/assignments/{world.assignment_id}/release", json={}, headers=forged)
    logout = await student.post("/api/logout", headers=forged)
    for answer in (upload, edit, release, logout):
        assert answer.status_code == 403, answer.text
        assert "accepted only from handin's own pages" in answer.json()["detail"]
    async with sessions() as session:
        assignment = await session.get(Assignment, world.assignment_id)
        assert assignment is not None and assignment.title == "Essay" and assignment.grades_released_at is None
        assert await session.scalar(select(func.count()).select_from(Submission)) == 0
        assert await session.scalar(select(func.count()).where(WebSession.revoked_at.is_not(None))) == 0
    assert (await student.get("/api/me")).status_code == 200


async def test_same_origin_requests_pass(as_user: Login, world: World) -> None:
    student, staff = await as_user("student"), await as_user("staff")
    upload = await student.post(
        f"/api/assignments/{world.assignment_id}/submissions",
        files={"file": ("essay.txt", b"my essay\n", "text/plain")},
    )
    assert upload.status_code == 202, upload.text
    release = await staff.post(f"/api/assignments/{world.assignment_id}/release", json={})
    assert release.status_code == 200, release.text
    assert (await student.post("/api/logout")).status_code == 200


async def test_without_origin_only_same_origin_fetch_metadata_passes(app: FastAPI, world: World) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://handin.test") as bare:
        credentials = {"email": World.email("student"), "password": PASSWORD}
        nothing = await bare.post("/api/login", json=credentials)
        assert nothing.status_code == 403 and "no Origin header" in nothing.json()["detail"]
        cross = await bare.post("/api/login", json=credentials, headers={"Sec-Fetch-Site": "same-site"})
        assert cross.status_code == 403
        same = await bare.post("/api/login", json=credentials, headers={"Sec-Fetch-Site": "same-origin"})
        assert same.status_code == 200


async def test_html_forms_carry_a_token_and_a_form_post_without_it_fails(
    client: httpx.AsyncClient, world: World
) -> None:
    page = (await client.get("/login?next=/courses")).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert token is not None
    fields = {"email": World.email("student"), "password": PASSWORD, "next": "/courses"}
    no_header = {"X-CSRF-Token": ""}  # the form alone, as a browser without scripts posts it
    missing = await client.post("/api/login", data=fields, headers=no_header)
    assert missing.status_code == 403 and "CSRF token" in missing.json()["detail"]
    wrong = await client.post("/api/login", data={**fields, "csrf_token": "x" + token[1]}, headers=no_header)
    assert wrong.status_code == 403
    right = await client.post("/api/login", data={**fields, "csrf_token": token[1]}, headers=no_header)
    assert right.status_code == 303 and right.headers["location"] == "/courses"
    # Every form on a logged-in page has it (the logout form in the header, here).
    courses = (await client.get("/courses")).text
    forms = re.findall(r"<form[^>]*method=\"post\"[^>]*>(.*?)</form>", courses, re.S)
    assert forms and all('name="csrf_token"' in form for form in forms)


async def test_the_signed_webhook_is_exempt(client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(transport=client._transport, base_url="http://handin.test") as provider:
        answer = await provider.post("/api/webhooks/similarity", content=b"{}")
    assert answer.status_code == 401  # its own signature check, not the CSRF one


# --- security headers ----------------------------------------------------------------------------


async def test_pages_and_api_answers_carry_security_headers(client: httpx.AsyncClient, settings: Settings) -> None:
    for path in ("/login", "/api/me", "/static/js/util.js", "/no-such-page"):
        answer = await client.get(path)
        csp = answer.headers["content-security-policy"]
        for directive in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'self'"):
            assert directive in csp, (path, csp)
        assert "connect-src 'self' ws://127.0.0.1:8080" in csp
        assert "unsafe-inline" not in csp
        assert answer.headers["x-frame-options"] == "DENY"
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "same-origin"
        assert "strict-transport-security" not in answer.headers  # plain http here
    secure = create_app(settings.model_copy(update={"public_url": "https://handin.example.edu"}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=secure), base_url="https://handin.test") as http:
        answer = await http.get("/healthz")
    assert answer.headers["strict-transport-security"].startswith("max-age=31536000")


# --- body limits ---------------------------------------------------------------------------------


async def test_a_large_declared_body_is_refused_before_it_is_read(client: httpx.AsyncClient) -> None:
    async def endless() -> AsyncIterator[bytes]:
        raise AssertionError("the api read the body")
        yield b""  # pragma: no cover

    answer = await client.post(
        "/api/login",
        content=endless(),
        headers={"Content-Length": str(200 * 1024 * 1024), "Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert "larger than this address accepts (64 KB)" in answer.json()["detail"]


def reset_peak_memory() -> None:
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # the peak (VmHWM) starts again from what is resident now


def memory_kb(field: str) -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise LookupError(field)


@pytest.mark.parametrize("path", ["/api/login", "/api/webhooks/similarity"])
async def test_a_huge_chunked_body_is_refused_while_streaming_without_growing_memory(
    live_server: str, settings: Settings, path: str
) -> None:
    """A real server (in this process), a body without Content-Length: memory stays far below the body's size."""
    # Within what the api drains after refusing (so the client reads the 413 rather than a reset).
    chunk, chunks = b"0" * (256 * 1024), 24

    async def body(count: int) -> AsyncIterator[bytes]:
        for _ in range(count):
            yield chunk

    async with httpx.AsyncClient(base_url=live_server, timeout=60, event_hooks=same_origin(settings)) as http:
        json_body = {"Content-Type": "application/json"}
        # The same refusal once first, so the server's and client's first-use allocations are not counted.
        assert (await http.post(path, content=body(8), headers=json_body)).status_code == 413
        reset_peak_memory()
        before = memory_kb("VmRSS")
        answer = await http.post(path, content=body(chunks), headers=json_body)
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert answer.status_code == 413, answer.text
    grown_kb = memory_kb("VmHWM") - before
    assert grown_kb < len(chunk) * chunks / 1024 / 4, f"peak memory grew {grown_kb} KB"


# --- metrics and docs off the public port --------------------------------------------------------


async def test_production_serves_metrics_and_docs_only_on_the_internal_port(settings: Settings) -> None:
    port = free_port()
    prod = settings.model_copy(
        update={
            "environment": "production",
            "public_url": "https://handin.example.edu",
            "security": settings.security.model_copy(update={"internal_port": port, "internal_host": "127.0.0.1"}),
        }
    )
    app = create_app(prod)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="https://handin.test") as public:
            for path in ("/metrics", "/api/docs", "/api/openapi.json", "/redoc"):
                assert (await public.get(path)).status_code == 404, path
            assert (await public.get("/healthz")).status_code == 200
        assert app.state.internal_port == port
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as internal:
            metrics = await internal.get("/metrics")
            assert metrics.status_code == 200 and "handin_http_requests_total" in metrics.text
            assert (await internal.get("/api/docs")).status_code == 200
            schema = (await internal.get("/api/openapi.json")).json()
            assert "/api/login" in schema["paths"]
