"""Probes and metrics: /healthz (process alive), /readyz (database and Redis answer), /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from api.deps import RedisDep, SessionsDep

router = APIRouter(tags=["health"])
# Not on the public port in production: the api's internal listener serves it (api/middleware/internal.py).
metrics_router = APIRouter(tags=["health"])
CHECK_TIMEOUT_SECONDS = 2.0


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(sessions: SessionsDep, redis: RedisDep) -> JSONResponse:
    checks = {"database": await _check_database(sessions), "redis": await _check_redis(redis)}
    failed = [name for name, result in checks.items() if result != "ok"]
    if failed:
        return JSONResponse({"detail": f"not ready: {', '.join(failed)} unreachable", "checks": checks}, 503)
    return JSONResponse({"status": "ready", "checks": checks})


async def _check_database(sessions: SessionsDep) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS), sessions() as session:
            await session.execute(text("SELECT 1"))
    except Exception as error:  # any failure means "not ready", with its reason
        return f"error: {type(error).__name__}: {error}"[:300]
    return "ok"


async def _check_redis(redis: RedisDep) -> str:
    try:
        async with asyncio.timeout(CHECK_TIMEOUT_SECONDS):
            await redis.ping()
    except Exception as error:
        return f"error: {type(error).__name__}: {error}"[:300]
    return "ok"


@metrics_router.get("/metrics")
async def metrics() -> Response:
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
