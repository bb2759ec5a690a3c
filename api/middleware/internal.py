"""The api's internal listener: ``/metrics`` and the API docs, off the public port.

In production the public app serves neither (the Ingress exposes the public
port to the world); this small second server in the same process serves them
on ``security.internal_port`` for Prometheus and the platform team, reached
through the pod network only. With several server processes (``--workers``)
each binds the port with SO_REUSEPORT, as they share the public one.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import uvicorn
from fastapi import FastAPI

from api.routes.health import metrics_router
from core.settings import Settings


def internal_app(public: FastAPI) -> FastAPI:
    app = FastAPI(title="handin (internal)", docs_url="/api/docs", openapi_url="/api/openapi.json")
    app.include_router(metrics_router)
    # The docs describe the public app's routes, not this listener's.
    app.openapi = public.openapi  # type: ignore[method-assign]
    return app


@contextlib.asynccontextmanager
async def internal_listener(public: FastAPI, settings: Settings) -> AsyncIterator[int | None]:
    """Serve the internal app while the public app runs; yields the bound port (None when disabled).

    The server's steps are driven here rather than through ``serve()``, which would take over the
    process's signal handlers from the main server.
    """
    port = settings.security.internal_port
    if not port:
        yield None
        return
    sock = socket.socket(socket.AF_INET6 if ":" in settings.security.internal_host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.security.internal_host, port))
    config = uvicorn.Config(internal_app(public), log_config=None, access_log=False, lifespan="off")
    config.load()
    server = uvicorn.Server(config)
    server.lifespan = config.lifespan_class(config)
    await server.startup(sockets=[sock])
    loop = asyncio.create_task(server.main_loop())
    try:
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        await loop
        await server.shutdown(sockets=[sock])
        sock.close()
