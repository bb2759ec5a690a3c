"""Forged requests: every state-changing request must come from handin's own pages.

Two checks, both here so no route can forget them:

- **Origin.** A POST, PUT, PATCH or DELETE must carry ``Origin`` equal to the
  public URL's origin (or, without ``Origin``, ``Sec-Fetch-Site: same-origin``).
  ``SameSite=Lax`` alone let a sibling origin (same site, another port or
  subdomain) post with the student's cookie. A request with neither header is
  refused too: every browser sends one, and API clients are told what to send.
- **Token.** A request a foreign page could send without a CORS preflight
  (no body type, a form, or text/plain) must also carry the CSRF token, in the
  ``X-CSRF-Token`` header (page scripts) or a ``csrf_token`` form field (HTML
  forms; in a multipart form it must be the first field). The token is an HMAC
  of a random cookie nonce and the session cookie, so it cannot be planted from
  a sibling subdomain or reused across sessions. Pages get it as
  ``request.state.csrf_token``.

Machine-to-machine endpoints that carry their own signature are exempt, all in
``EXEMPT_PATHS``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from urllib.parse import parse_qsl, urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import cookie_parser
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import SESSION_COOKIE
from core.settings import Settings

STATE_CHANGING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Each checks its own HMAC signature over the body; a browser never posts here.
EXEMPT_PATHS = frozenset({"/api/webhooks/similarity", "/api/admin/messages"})
# Body types a cross-site <form> or no-cors fetch can send without a preflight.
SIMPLE_TYPES = frozenset({"", "application/x-www-form-urlencoded", "multipart/form-data", "text/plain"})
TOKEN_HEADER = "x-csrf-token"
TOKEN_FIELD = "csrf_token"
# A multipart form's first part (the token field) is looked for within this many bytes.
MULTIPART_PEEK_BYTES = 8 * 1024


def cookie_name(settings: Settings) -> str:
    # __Host- cookies cannot be set by a sibling subdomain (https only).
    return "__Host-handin_csrf" if settings.public_url.startswith("https://") else "handin_csrf"


def public_origin(public_url: str) -> str:
    parts = urlsplit(public_url)
    port = parts.port
    default = {"http": 80, "https": 443}.get(parts.scheme)
    host = (parts.hostname or "").lower()
    return f"{parts.scheme}://{host}" + (f":{port}" if port and port != default else "")


def csrf_token(secret: str, nonce: str, session_cookie: str) -> str:
    key = hashlib.sha256(f"csrf:{secret}".encode()).digest()
    digest = hmac.new(key, f"{nonce}|{session_cookie}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


class CsrfMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.secret = settings.secret_key
        self.origin = public_origin(settings.public_url)
        self.cookie = cookie_name(settings)
        self.secure = settings.public_url.startswith("https://")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        cookies = cookie_parser(headers.get("cookie", ""))
        nonce = cookies.get(self.cookie) or ""
        new_nonce = not nonce
        if new_nonce:
            nonce = secrets.token_urlsafe(18)
        expected = csrf_token(self.secret, nonce, cookies.get(SESSION_COOKIE, ""))
        scope.setdefault("state", {})["csrf_token"] = expected

        if scope["method"] in STATE_CHANGING and scope["path"] not in EXEMPT_PATHS:
            refusal = self._origin_refusal(headers)
            if refusal is None and _media_type(headers) in SIMPLE_TYPES:
                token, receive = await _token_of(headers, receive)
                if new_nonce or not token or not hmac.compare_digest(token, expected):
                    refusal = (
                        "This form is out of date or did not come from handin's own page "
                        "(missing or wrong CSRF token). Reload the page and try again."
                    )
            if refusal is not None:
                await _forbidden(send, refusal)
                return

        async def send_with_cookie(message: Message) -> None:
            if new_nonce and message["type"] == "http.response.start":
                attributes = "Path=/; HttpOnly; SameSite=Lax" + ("; Secure" if self.secure else "")
                MutableHeaders(scope=message).append("set-cookie", f"{self.cookie}={nonce}; {attributes}")
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    def _origin_refusal(self, headers: Headers) -> str | None:
        origin = headers.get("origin")
        if origin is not None:
            if origin.lower() == self.origin:
                return None
            return (
                f"Changes are accepted only from handin's own pages at {self.origin}; this request came from {origin}."
            )
        fetch_site = headers.get("sec-fetch-site")
        if fetch_site is not None:
            if fetch_site == "same-origin":
                return None
            return f"Changes are accepted only from handin's own pages at {self.origin} (Sec-Fetch-Site: {fetch_site})."
        return f"This request has no Origin header; changes are accepted only with Origin: {self.origin}."


def _media_type(headers: Headers) -> str:
    return headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _token_of(headers: Headers, receive: Receive) -> tuple[str | None, Receive]:
    """The token from the header, or from the form body (read, then replayed to the route)."""
    token = headers.get(TOKEN_HEADER)
    if token:
        return token, receive
    media_type = _media_type(headers)
    if media_type == "application/x-www-form-urlencoded":
        # Bounded by the body limit outside this middleware (64 KB by default).
        messages, body = await _peek(receive, None)
        fields = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
        return fields.get(TOKEN_FIELD), _replay(messages, receive)
    if media_type == "multipart/form-data":
        boundary = _boundary(headers.get("content-type", ""))
        if boundary is None:
            return None, receive
        messages, body = await _peek(receive, MULTIPART_PEEK_BYTES)
        return _first_multipart_field(body, boundary, TOKEN_FIELD), _replay(messages, receive)
    return None, receive


async def _peek(receive: Receive, max_bytes: int | None) -> tuple[list[Message], bytes]:
    messages: list[Message] = []
    body = bytearray()
    while max_bytes is None or len(body) < max_bytes:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    return messages, bytes(body)


def _replay(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replaying_receive() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replaying_receive


_BOUNDARY = re.compile(r'boundary="?([^";]+)"?', re.IGNORECASE)


def _boundary(content_type: str) -> bytes | None:
    found = _BOUNDARY.search(content_type)
    return found.group(1).encode() if found else None


def _first_multipart_field(body: bytes, boundary: bytes, name: str) -> str | None:
    start = b"--" + boundary + b"\r\n"
    if not body.startswith(start):
        return None
    head_end = body.find(b"\r\n\r\n", len(start))
    if head_end < 0:
        return None
    head = body[len(start) : head_end].decode("latin-1").lower()
    if f'name="{name}"' not in head or "filename=" in head:
        return None
    value_end = body.find(b"\r\n--" + boundary, head_end + 4)
    if value_end < 0:
        return None
    return body[head_end + 4 : value_end].decode("utf-8", "replace")


async def _forbidden(send: Send, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
