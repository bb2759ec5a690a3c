"""Security headers on every answer: a strict CSP, no framing, no sniffing, HSTS over https.

The pages carry no inline script or style (data for scripts travels in
``<script type="application/json">`` blocks and ``data-`` attributes), so the
policy allows only this origin, plus the WAMP router's WebSocket address for
``connect-src``. Nothing may frame a page: the grading and release pages must
not be clickjacked.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.settings import Settings

HSTS_MAX_AGE_SECONDS = 365 * 24 * 3600


def content_security_policy(router_url: str) -> str:
    router = urlsplit(router_url)
    connect = ["'self'"]
    if router.scheme in ("ws", "wss") and router.netloc:
        connect.append(f"{router.scheme}://{router.netloc}")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data:",
            f"connect-src {' '.join(connect)}",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'self'",
            "form-action 'self'",
        ]
    )


def security_headers(settings: Settings) -> list[tuple[str, str]]:
    headers = [
        ("Content-Security-Policy", content_security_policy(settings.router_url)),
        ("X-Frame-Options", "DENY"),
        ("X-Content-Type-Options", "nosniff"),
        ("Referrer-Policy", "same-origin"),
        ("Cross-Origin-Opener-Policy", "same-origin"),
    ]
    if settings.public_url.startswith("https://"):
        headers.append(("Strict-Transport-Security", f"max-age={HSTS_MAX_AGE_SECONDS}; includeSubDomains"))
    return headers


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.headers = security_headers(settings)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in self.headers:
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)
