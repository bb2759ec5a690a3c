"""The api's defences against forged requests and cheap denial of service, as pure ASGI middleware.

Each is pure ASGI (no body buffering beyond its own small bound), so streaming
uploads pass straight through. ``install`` adds them in the one order that
works: headers outermost (every answer carries them, refusals included), then
the body limit, then the CSRF check, which may read a small form body.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.middleware.csrf import CsrfMiddleware
from api.middleware.headers import SecurityHeadersMiddleware
from api.middleware.limits import BodyLimitMiddleware
from core.settings import Settings


def install(app: FastAPI, settings: Settings) -> None:
    # add_middleware wraps what is there: the last added runs first.
    app.add_middleware(CsrfMiddleware, settings=settings)
    app.add_middleware(BodyLimitMiddleware, settings=settings)
    app.add_middleware(SecurityHeadersMiddleware, settings=settings)
