"""Request body limits on every route, enforced before the route reads a byte.

Unauthenticated routes (login, the similarity webhook) used to read whole
bodies: a 200 MB login body cost the api 400 MB. Now a declared
``Content-Length`` over the route's limit is refused with 413 at once, and a
body without one (chunked) is counted as it streams and refused as soon as it
passes the limit. The upload route keeps its own, larger bound (the intake
refuses first, with the assignment's limit in its message).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.intake import DRAIN_AFTER_REFUSAL, MULTIPART_OVERHEAD
from api.tus import MAX_CHUNK_BYTES
from core.settings import Settings

UPLOAD_PATH = re.compile(r"/api/assignments/[^/]+/submissions")
# A resumable upload's PATCH carries one chunk (api.tus.MAX_CHUNK_BYTES), never the whole file.
TUS_PATCH_PATH = re.compile(r"/api/assignments/[^/]+/uploads/[^/]+")
WEBHOOK_PATHS = frozenset({"/api/webhooks/similarity", "/api/admin/messages"})


class BodyTooLarge(Exception):
    """The streamed body passed the route's limit."""


@dataclass(frozen=True)
class Limits:
    default: int
    upload: int
    webhook: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        # The intake refuses past the assignment's limit and then drains a little so the browser
        # sees its 413; this bound sits above all of that, so the intake's refusal is the one sent.
        upload = settings.max_upload_bytes + MULTIPART_OVERHEAD + DRAIN_AFTER_REFUSAL
        return cls(settings.security.max_body_bytes, upload, settings.security.max_webhook_body_bytes)

    def for_request(self, method: str, path: str) -> int:
        if method == "POST" and UPLOAD_PATH.fullmatch(path):
            return self.upload
        if method == "PATCH" and TUS_PATCH_PATH.fullmatch(path):
            return MAX_CHUNK_BYTES + DRAIN_AFTER_REFUSAL
        if path in WEBHOOK_PATHS:
            return self.webhook
        return self.default


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.limits = Limits.from_settings(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.for_request(scope["method"], scope["path"])
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await too_large(send, limit)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge
            return message

        async def watching_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, watching_send)
        except BodyTooLarge:
            if started:
                raise
            await drain(receive, DRAIN_AFTER_REFUSAL)
            await too_large(send, limit)


async def drain(receive: Receive, max_bytes: int) -> None:
    """Read and drop a little more of a refused body: a server that closes with unread bytes resets the
    connection, and the client never reads the 413 (an endless body is cut off after ``max_bytes``)."""
    drained = 0
    while drained < max_bytes:
        message = await receive()
        if message["type"] != "http.request":
            return
        drained += len(message.get("body", b""))
        if not message.get("more_body", False):
            return


async def too_large(send: Send, limit: int) -> None:
    """413 with a sentence; the connection closes after it, so nothing more is read."""
    body = json.dumps({"detail": f"The request body is larger than this address accepts ({_size(limit)})."}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else None
    return None


def _size(count: int) -> str:
    if count >= 1024 * 1024:
        return f"{count / 1024 / 1024:.0f} MB"
    return f"{count // 1024} KB"
