"""``POST /api/admin/messages``: the central admin system tells handin things (core.admin_messages).

Machine to machine: no session, no CSRF token (exempt in api.middleware.csrf); the body is trusted
only with a valid signature and a fresh timestamp, and its size is bounded by
``HANDIN_SECURITY__MAX_WEBHOOK_BODY_BYTES`` (api.middleware.limits). Every refusal is JSON
``{"detail": "<the problem>"}`` and changes nothing.
"""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from api.deps import RedisDep, SessionsDep, SettingsDep
from core import admin_messages
from core.admin_messages import IDEMPOTENCY_HEADER, REPLAYED_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, MessageRefused

PATH = "/api/admin/messages"

router = APIRouter(prefix="/api/admin", tags=["webhooks"])


@router.post("/messages")
async def admin_message(
    request: Request, settings: SettingsDep, sessions: SessionsDep, redis: RedisDep
) -> JSONResponse:
    secret = settings.admin.inbound_secret
    if not secret:
        return JSONResponse({"detail": "messages from the admin system are not configured here"}, status_code=503)
    body = await request.body()
    try:
        admin_messages.check_signature(
            secret,
            request.headers.get(TIMESTAMP_HEADER),
            request.headers.get(SIGNATURE_HEADER),
            body,
            time.time(),
            settings.admin.inbound_window_seconds,
        )
        key = admin_messages.check_key(request.headers.get(IDEMPOTENCY_HEADER))
        message = admin_messages.parse_message(body)
        answer = await admin_messages.receive(sessions, redis, key, body, message)
    except MessageRefused as refused:
        return JSONResponse({"detail": refused.problem}, status_code=refused.status)
    headers = {REPLAYED_HEADER: "true"} if answer.replayed else {}
    return JSONResponse(answer.body, status_code=answer.status, headers=headers)
