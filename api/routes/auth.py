"""Log in and out with a session cookie; who am I; a ticket for the WebSocket router."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from datetime import timedelta
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from redis.exceptions import RedisError
from sqlalchemy import select

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
from core.auth import hash_password, mint_ws_ticket, sign, verify_password
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
async def login(request: Request, sessions: SessionsDep, settings: SettingsDep) -> Response:
    """JSON ``{"email", "password"}`` answers JSON; an HTML form post is redirected to its ``next`` field."""
    fields, from_form = await _credentials(request)
    email, password = fields.get("email", "").strip().lower(), fields.get("password", "")
    if not email or not password:
        raise HTTPException(422, "Give both an email address and a password.")
    async with sessions() as session:
        user = await session.scalar(select(User).where(User.email == email))
    stored = user.password_hash if user is not None else _DUMMY_HASH
    # scrypt takes tens of milliseconds of CPU: keep it off the event loop.
    if not await asyncio.to_thread(verify_password, password, stored) or user is None:
        raise HTTPException(401, "Wrong email address or password.")
    session_id = secrets.token_urlsafe(32)
    expires = utcnow() + timedelta(seconds=settings.session_max_age_seconds)
    async with transaction(sessions) as session:
        session.add(WebSession(id=session_id, user_id=user.id, expires_at=expires))
    response: Response
    if from_form:
        response = RedirectResponse(_local_path(fields.get("next")), status_code=303)
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


def _local_path(target: str | None) -> str:
    """Only redirect within this site (no //evil.example or absolute URLs)."""
    if target and target.startswith("/") and not target.startswith(("//", "/\\")):
        return target
    return "/"


async def _announce_revoked(redis: RedisDep, session_id: str, settings: Settings) -> None:
    try:
        await redis.set(keys.web_session_revoked(session_id), "1", ex=settings.session_max_age_seconds)
        await redis.publish(keys.WEB_SESSION_REVOKED_CHANNEL, session_id)
    except (RedisError, OSError) as error:
        # The database row is revoked already; routers re-check it when a socket next authorises.
        log.warning("could not announce logout to routers", extra={"error": str(error)})
