"""Prometheus metrics of the autoscaler and its /healthz + /metrics listener."""

from __future__ import annotations

import asyncio
import time

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, generate_latest

from autoscaler.policy import Decision


class AutoscalerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.desired = Gauge("handin_autoscaler_desired_replicas", "Replicas decided", ["pool"], registry=r)
        self.current = Gauge("handin_autoscaler_current_replicas", "Replicas before the decision", ["pool"], registry=r)
        self.backlog = Gauge("handin_autoscaler_backlog_jobs", "Jobs in a pool's queue", ["pool", "state"], registry=r)
        self.forecast = Gauge(
            "handin_autoscaler_forecast_jobs", "Submissions expected within the lead time", ["pool"], registry=r
        )
        self.drain_rate = Gauge(
            "handin_autoscaler_drain_rate", "Jobs/s one replica finishes (measured or default)", ["pool"], registry=r
        )
        self.arrival_rate = Gauge("handin_autoscaler_arrival_rate", "Jobs/s arriving (measured)", ["pool"], registry=r)
        self.leader = Gauge("handin_autoscaler_leader", "1 while this process leads", registry=r)
        self.errors = Counter("handin_autoscaler_errors", "Failed pool cycles", ["pool"], registry=r)
        self.cycles = Counter("handin_autoscaler_cycles", "Completed cycles", registry=r)
        self.redis_up = Gauge("handin_autoscaler_redis_up", "1 while the queues in Redis are readable", registry=r)
        self.redis_up.set(1)
        self.last_cycle = time.monotonic()
        self.degraded: str | None = None  # why cycles run on less than they need, if they do

    def record(self, decision: Decision) -> None:
        pool, inputs = decision.task, decision.inputs
        self.desired.labels(pool).set(decision.desired)
        self.current.labels(pool).set(decision.current)
        self.backlog.labels(pool, "ready").set(inputs.ready)
        self.backlog.labels(pool, "running").set(inputs.running)
        self.backlog.labels(pool, "deferred").set(inputs.deferred)
        self.forecast.labels(pool).set(inputs.forecast_jobs)
        self.drain_rate.labels(pool).set(inputs.drain_rate)
        self.arrival_rate.labels(pool).set(inputs.arrival_rate)

    def cycle_done(self) -> None:
        self.cycles.inc()
        self.last_cycle = time.monotonic()

    def set_degraded(self, reason: str | None) -> None:
        self.degraded = reason
        self.redis_up.set(0 if reason == "redis unreachable" else 1)

    def healthy(self, max_age: float) -> bool:
        return time.monotonic() - self.last_cycle < max_age


async def serve_http(metrics: AutoscalerMetrics, port: int, max_age: float, host: str = "0.0.0.0") -> asyncio.Server:
    """/healthz answers 200 while cycles keep completing (a hung loop fails the probe); /metrics for scraping.

    A cycle that completes without Redis (pools held, the forecast still used) is healthy, and says
    so in the body: restarting the process would not bring Redis back, and would lose its state.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode("latin-1").split()
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            path = request_line[1] if len(request_line) > 1 else "/"
            if path.startswith("/metrics"):
                status, body, kind = "200 OK", generate_latest(metrics.registry), CONTENT_TYPE_LATEST
            elif path.startswith("/healthz"):
                ok = metrics.healthy(max_age)
                status = "200 OK" if ok else "503 Service Unavailable"
                text = "ok" if ok else "stalled"
                if metrics.degraded:
                    text += f"; degraded: {metrics.degraded}"
                body, kind = f"{text}\n".encode(), "text/plain"
            else:
                status, body, kind = "404 Not Found", b"not found\n", "text/plain"
            writer.write(
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                "Connection: close\r\n\r\n".encode()
                + body
            )
            await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)
