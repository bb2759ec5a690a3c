"""The autoscaler's /healthz and /metrics over real HTTP on 127.0.0.1."""

from __future__ import annotations

import httpx

from autoscaler.metrics import AutoscalerMetrics, serve_http
from autoscaler.policy import PoolInputs, PoolLimits, decide


async def test_healthz_and_metrics_report_the_last_decision() -> None:
    metrics = AutoscalerMetrics()
    inputs = PoolInputs(task="scan", ready=120, running=3, deferred=2, current_replicas=1, drain_rate=20.0)
    metrics.record(decide(inputs, PoolLimits(target_wait=2), now=0))
    metrics.cycle_done()
    server = await serve_http(metrics, port=0, max_age=30, host="127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/healthz")
            scrape = await client.get("/metrics")
            metrics.last_cycle -= 60  # the loop has stalled
            stalled = await client.get("/healthz")
    finally:
        server.close()
        await server.wait_closed()
    assert health.status_code == 200
    assert 'handin_autoscaler_desired_replicas{pool="scan"} 4.0' in scrape.text
    assert 'handin_autoscaler_backlog_jobs{pool="scan",state="ready"} 120.0' in scrape.text
    assert stalled.status_code == 503
