"""Log in and out with a session cookie; who am I; a ticket for the WebSocket router.

Logins are throttled per account and per client address (failures counted in
Redis): past the limit the account or address is locked out and every attempt
is answered 429 with ``Retry-After`` until the lockout ends, a right password
too, so guessing gains nothing from speed. A password stored in an older hash
format is rehashed with argon2id when its owner next logs in.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import math
import posixpath
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import unquote, urlsplit

from arq.connections import ArqRedis
from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from redis.exceptions import RedisError
from sqlalchemy import select, update

from api.deps import (
    SESSION_COOKIE,
    WEB_SESSION_PURPOSE,
    CurrentUser,
    CurrentWebSession,
    OptionalWebSession,
    RedisDep,
    SessionDep,
    SessionsDep,
    SettingsDep,
)
from api.views import user_view
from core import keys
from core.auth import hash_password, mint_ws_ticket, needs_rehash, sign, verify_password
from core.clock import utcnow
from core.db import transaction
from core.models import Course, Enrolment, User, WebSession
from core.settings import Settings

router = APIRouter(prefix="/api", tags=["auth"])
log = logging.getLogger(__name__)

# Checked when the email is unknown, so a wrong email costs as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


@router.post("/login")
async def login(request: Request, sessions: SessionsDep, redis: RedisDep, settings: SettingsDep) -> Response:
    """JSON ``{"email", "password"}`` answers JSON; an HTML form post is redirected to its ``next`` field."""
    fields, from_form = await _credentials(request)
    email, password = fields.get("email", "").strip().lower(), fields.get("password", "")
    if not email or not password:
        raise HTTPException(422, "Give both an email address and a password.")
    throttle = LoginThrottle(redis, settings, email, request.client.host if request.client else "unknown")
    await throttle.check()
    async with sessions() as session:
        user = await session.scalar(select(User).where(User.email == email))
    stored = user.password_hash if user is not None else _DUMMY_HASH
    # argon2id takes tens of milliseconds of CPU and 64 MiB: keep it off the event loop.
    if not await asyncio.to_thread(verify_password, password, stored) or user is None:
        await throttle.failed()
        raise HTTPException(401, "Wrong email address or password.")
    await throttle.succeeded()
    if needs_rehash(stored):
        await _rehash(sessions, user.id, stored, password)
    session_id = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=settings.session_max_age_seconds)
    async with transaction(sessions) as session:
        session.add(WebSession(id=session_id, user_id=user.id, expires_at=expires))
    response: Response
    if from_form:
        response = RedirectResponse(safe_next(fields.get("next")), status_code=303)
    else:
        response = JSONResponse({"user": user_view(user)})
    cookie = sign({"sid": session_id, "exp": int(expires.timestamp())}, settings.secret_key, WEB_SESSION_PURPOSE)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=settings.session_max_age_seconds,
        httponly=True,
        samesite="lax",
        secure=settings.public_url.startswith("https://"),
        path="/",
    )
    return response


@router.post("/logout")
async def logout(
    request: Request, web_session: OptionalWebSession, sessions: SessionsDep, redis: RedisDep, settings: SettingsDep
) -> Response:
    """Ends the session here and, through Redis, every WebSocket it opened. Safe to repeat."""
    if web_session is not None:
        async with transaction(sessions) as session:
            row = await session.get(WebSession, web_session.id)
            if row is not None and row.revoked_at is None:
                row.revoked_at = utcnow()
        await _announce_revoked(redis, web_session.id, settings)
    from_form = request.headers.get("content-type", "").startswith(FORM_TYPES)
    response: Response = (
        RedirectResponse("/", status_code=303) if from_form else JSONResponse({"detail": "You are logged out."})
    )
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="lax")
    return response


@router.get("/me")
async def me(user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    rows = await session.execute(
        select(Course, Enrolment.role)
        .join(Enrolment, Enrolment.course_id == Course.id)
        .where(Enrolment.user_id == user.id)
    )
    courses = [{"id": c.id, "code": c.code, "title": c.title, "role": role} for c, role in rows]
    return {**user_view(user), "is_service": user.is_service, "courses": courses}


@router.get("/ws-ticket")
async def ws_ticket(user: CurrentUser, web_session: CurrentWebSession, settings: SettingsDep) -> dict[str, Any]:
    ticket = mint_ws_ticket(user.id, web_session.id, settings.secret_key, settings.ws_ticket_ttl_seconds)
    return {"ticket": ticket, "expires_in": settings.ws_ticket_ttl_seconds, "router_url": settings.router_url}


async def _credentials(request: Request) -> tuple[dict[str, str], bool]:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith(FORM_TYPES):
        form = await request.form()  # a login form is a few bytes; spooling it is harmless
        return {k: v for k, v in form.items() if isinstance(v, str)}, True
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError as error:
        raise HTTPException(400, "Send JSON with email and password, or a login form.") from error
    if not isinstance(body, dict):
        raise HTTPException(400, "Send JSON with email and password, or a login form.")
    return {k: v for k, v in body.items() if isinstance(v, str)}, False


_UNSAFE_IN_PATH = frozenset(chr(code) for code in [*range(0x20), 0x7F]) | {"\\"}


def safe_next(target: str | None, default: str = "/") -> str:
    """Where to go after logging in: a path on this site, normalised, or ``default``.

    Refused: anything not starting with exactly one ``/`` (``//evil.example``,
    absolute URLs), backslashes (``/\\evil.example``: browsers read it as ``//``)
    and control characters (a TAB inside ``/<TAB>/evil.example`` is dropped by
    the URL parser, leaving ``//``), also once percent-decoded.
    """
    if not target:
        return default
    for candidate in (target, unquote(target)):
        if not candidate.startswith("/") or candidate.startswith("//") or _UNSAFE_IN_PATH.intersection(candidate):
            return default
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return default
    path = posixpath.normpath(parts.path)
    if path.startswith("//"):
        return default
    if parts.path.endswith("/") and path != "/":
        path += "/"
    return path + (f"?{parts.query}" if parts.query else "")


class LoginThrottle:
    """Failed logins per account and per client address, counted in Redis.

    ``max failures`` within ``login_window_seconds`` lock the account (or address) out for
    ``login_lockout_seconds``; the count starts again after the lockout.
    """

    def __init__(self, redis: ArqRedis, settings: Settings, email: str, address: str) -> None:
        security = settings.security
        self.redis = redis
        self.window_ms = max(1, int(security.login_window_seconds * 1000))
        self.lockout_ms = max(1, int(security.login_lockout_seconds * 1000))
        account = hashlib.sha256(email.encode()).hexdigest()[:32]  # no address book of emails in Redis
        self.subjects = [
            ("account", account, security.login_max_failures_per_account),
            ("address", address, security.login_max_failures_per_address),
        ]

    async def check(self) -> None:
        """429 with Retry-After during a lockout; a right password gets the same answer."""
        try:
            for kind, who, _limit in self.subjects:
                remaining_ms = await self.redis.pttl(keys.login_lockout(kind, who))
                if remaining_ms > 0:
                    wait = max(1, math.ceil(remaining_ms / 1000))
                    raise HTTPException(
                        429,
                        f"Too many failed logins for this {kind}. Try again in {wait} seconds.",
                        headers={"Retry-After": str(wait)},
                    )
        except (RedisError, OSError) as error:
            # Without Redis nobody could log in; throttling resumes when it is back.
            log.warning("login throttle unavailable", extra={"error": str(error)})

    async def failed(self) -> None:
        try:
            for kind, who, limit in self.subjects:
                counter = keys.login_failures(kind, who)
                failures = await self.redis.incr(counter)
                if failures == 1:
                    await self.redis.pexpire(counter, self.window_ms)
                if failures >= limit:
                    await self.redis.set(keys.login_lockout(kind, who), "1", px=self.lockout_ms)
                    await self.redis.delete(counter)
                    log.warning("login locked out", extra={"kind": kind, "failures": failures})
        except (RedisError, OSError) as error:
            log.warning("login throttle unavailable", extra={"error": str(error)})

    async def succeeded(self) -> None:
        kind, who, _limit = self.subjects[0]
        try:
            await self.redis.delete(keys.login_failures(kind, who))
        except (RedisError, OSError) as error:
            log.warning("login throttle unavailable", extra={"error": str(error)})


async def _rehash(sessions: SessionsDep, user_id: int, old: str, password: str) -> None:
    new = await asyncio.to_thread(hash_password, password)
    async with transaction(sessions) as session:
        # Only if unchanged meanwhile: a password change in between wins.
        await session.execute(
            update(User).where(User.id == user_id, User.password_hash == old).values(password_hash=new)
        )


async def _announce_revoked(redis: RedisDep, session_id: str, settings: Settings) -> None:
    try:
        await redis.set(keys.web_session_revoked(session_id), "1", ex=settings.session_max_age_seconds)
        await redis.publish(keys.WEB_SESSION_REVOKED_CHANNEL, session_id)
    except (RedisError, OSError) as error:
        # The database row is revoked already; routers re-check it when a socket next authorises.
        log.warning("could not announce logout to routers", extra={"error": str(error)})
