"""The api process: ``create_app()`` builds the FastAPI app; the lifespan opens its connections.

``handin api`` serves it with uvicorn (``factory=True``). Tests build it with
their own ``Settings`` and run the lifespan themselves.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from api.metrics import MetricsMiddleware
from api.routes import routers
from core.db import make_engine, make_sessionmaker
from core.queues import connect_lazily
from core.settings import Settings, get_settings
from core.storage import make_storage

STATIC_DIR = Path(__file__).parent / "static"


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(settings.database_url)
        redis = connect_lazily(settings.redis_url)
        storage = make_storage(settings)
        app.state.engine = engine
        app.state.sessions = make_sessionmaker(engine)
        app.state.redis = redis
        app.state.storage = storage
        try:
            yield
        finally:
            await storage.close()
            await redis.aclose()
            await engine.dispose()

    app = FastAPI(title="handin", lifespan=lifespan, docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.state.settings = settings
    app.add_middleware(MetricsMiddleware)
    for router in routers:
        app.include_router(router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
