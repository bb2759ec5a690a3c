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

from api import errors
from api.metrics import MetricsMiddleware
from api.middleware import install as install_security
from api.middleware.internal import internal_listener
from api.routes import routers
from api.routes.health import metrics_router
from core.db import make_engine, make_sessionmaker
from core.garbage import collect_garbage_rarely
from core.queues import connect_lazily
from core.settings import Settings, get_settings
from core.storage import make_storage

STATIC_DIR = Path(__file__).parent / "static"
# A young collection pauses a request: smaller than the workers' and the router's (50,000).
API_YOUNG_THRESHOLD = 10_000


def create_served_app() -> FastAPI:
    """What ``handin api`` serves (in each uvicorn process): the app, in a process whose start-up
    heap the garbage collector leaves alone from then on."""
    app = create_app()
    collect_garbage_rarely(API_YOUNG_THRESHOLD)
    return app


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
            if production:
                async with internal_listener(app, settings) as internal_port:
                    app.state.internal_port = internal_port
                    yield
            else:
                yield
        finally:
            await storage.close()
            await redis.aclose()
            await engine.dispose()

    # In production /metrics and the API docs are served only by the internal listener, never through the Ingress.
    production = settings.environment == "production"
    docs_url, openapi_url = (None, None) if production else ("/api/docs", "/api/openapi.json")
    app = FastAPI(title="handin", lifespan=lifespan, docs_url=docs_url, openapi_url=openapi_url, redoc_url=None)
    app.state.settings = settings
    install_security(app, settings)
    errors.install(app)
    app.add_middleware(MetricsMiddleware)
    for router in routers:
        app.include_router(router)
    if not production:
        app.include_router(metrics_router)
    if STATIC_DIR.is_dir():
        app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app
