"""Prometheus metrics for the api: requests by route template, uploads by outcome."""

from __future__ import annotations

import time

from prometheus_client import Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

REQUESTS = Counter(
    "handin_http_requests_total", "HTTP requests answered, by route template.", ["method", "route", "status"]
)
LATENCY = Histogram(
    "handin_http_request_duration_seconds",
    "Time to answer an HTTP request (until the response starts), by route template.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
UPLOADS = Counter(
    "handin_uploads_total", "Upload attempts, accepted or refused with the reason.", ["outcome", "reason"]
)
UPLOAD_BYTES = Counter("handin_upload_bytes_total", "Bytes of accepted uploads.")
UPLOAD_SIZE = Histogram(
    "handin_upload_size_bytes",
    "Size of accepted uploads.",
    buckets=(1e3, 1e4, 1e5, 1e6, 5e6, 1e7, 2.5e7, 5e7, 1e8),
)


def upload_accepted(size: int) -> None:
    UPLOADS.labels("accepted", "").inc()
    UPLOAD_BYTES.inc(size)
    UPLOAD_SIZE.observe(size)


def upload_refused(reason: str) -> None:
    UPLOADS.labels("refused", reason).inc()


class MetricsMiddleware:
    """Pure ASGI (no body buffering), so streaming uploads pass straight through."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_measure(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                LATENCY.labels(scope["method"], _route(scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            await self.app(scope, receive, send_and_measure)
        finally:
            REQUESTS.labels(scope["method"], _route(scope), str(status)).inc()


def _route(scope: Scope) -> str:
    # The router records the matched route in the scope; its path is the template, e.g. /api/submissions/{id}.
    route = scope.get("route")
    path = getattr(route, "path", None)
    if isinstance(path, str):
        return path
    if scope.get("path", "").startswith("/static/"):
        return "/static"
    return "<unmatched>"
