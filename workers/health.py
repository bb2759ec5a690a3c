"""Worker liveness: ``GET /healthz`` says 200 only while the arq loop turns and Redis answers.

The Prometheus exporter runs in a thread of its own, so on its own it answers
200 while the event loop is wedged (a job blocking it) or Redis is gone. A
watcher task on the worker's loop notes the time on each turn and pings Redis
through the worker's own pool; the HTTP thread compares those times with the
clock. ``/metrics`` is served on the same port, for Prometheus.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from threading import Thread

from prometheus_client.exposition import MetricsHandler
from redis.asyncio import Redis

log = logging.getLogger(__name__)

# How often the watcher turns, as a share of the staleness limit (and at most this often).
BEATS_PER_LIMIT = 4
MAX_BEAT_SECONDS = 5.0


class WorkerHealth:
    """What the event loop last proved, read by the HTTP thread (plain floats: safe across threads)."""

    def __init__(self, stale_after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stale_after = stale_after
        self.clock = clock
        started = clock()
        self.loop_seen = started
        self.redis_seen = started
        self.redis_error: str | None = None

    @property
    def beat_seconds(self) -> float:
        return min(MAX_BEAT_SECONDS, self.stale_after / BEATS_PER_LIMIT)

    def problems(self) -> list[str]:
        """Why the worker is not healthy; empty when it is."""
        now = self.clock()
        found = []
        loop_age = now - self.loop_seen
        if loop_age > self.stale_after:
            found.append(f"event loop: no turn for {loop_age:.0f} s (blocked or stopped)")
        redis_age = now - self.redis_seen
        if redis_age > self.stale_after:
            reason = f" ({self.redis_error})" if self.redis_error else ""
            found.append(f"redis: no answer for {redis_age:.0f} s{reason}")
        return found

    async def watch(self, redis: Callable[[], Redis | None]) -> None:
        """Runs on the worker's loop until cancelled; `redis` gives the worker's pool once it exists."""
        while True:
            self.loop_seen = self.clock()
            pool = redis()
            if pool is not None:
                try:
                    async with asyncio.timeout(self.beat_seconds):
                        await pool.ping()
                except Exception as error:  # any failure means "not reachable"; say which
                    self.redis_error = str(error) or type(error).__name__
                else:
                    self.redis_seen = self.clock()
                    self.redis_error = None
            await asyncio.sleep(self.beat_seconds)


def _handler(health: WorkerHealth) -> type[MetricsHandler]:
    class HealthHandler(MetricsHandler):
        def do_GET(self) -> None:
            if self.path.split("?", 1)[0] != "/healthz":
                super().do_GET()
                return
            problems = health.problems()
            body = ("\n".join(problems) if problems else "ok").encode() + b"\n"
            self.send_response(503 if problems else 200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return HealthHandler


def start_health_server(port: int, health: WorkerHealth, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    """Serve /healthz and /metrics on `port` from a daemon thread; raises OSError if the port is taken."""
    server = ThreadingHTTPServer((host, port), _handler(health))
    server.daemon_threads = True
    Thread(target=server.serve_forever, name="worker-health", daemon=True).start()
    return server
