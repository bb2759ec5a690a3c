"""One answer per refusal: for the exceptions the page dependencies in ``api.deps`` raise,
for ``GradeRefused`` from ``core.grades`` (the staff JSON API), and 503 when every database
connection stayed busy for the pool's whole wait.

By the time a handler runs, the request's own database session is closed
(its dependency exits before the exception reaches here), so the not-found
page reads through a short session of its own and never waits on the
request's SQLite write lock.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import TimeoutError as PoolTimeout

from api.deps import LoginRequired, PageNotFound, get_sessions
from api.routes.pages import not_found, to_login
from core.grades import GradeRefused
from core.models import User

log = logging.getLogger(__name__)

BUSY = "handin is too busy to handle this right now. Try again in a few seconds."
BUSY_RETRY_AFTER_SECONDS = 5


async def login_required(request: Request, _error: Exception) -> Response:
    return to_login(request)


async def page_not_found(request: Request, error: Exception) -> Response:
    what = error.what if isinstance(error, PageNotFound) else "page"
    # Set by the login dependency when the cookie named a live session.
    user: User | None = getattr(request.state, "web_session_user", None)
    async with get_sessions(request)() as session:
        return await not_found(request, session, user, what)


async def grade_refused(_request: Request, error: Exception) -> Response:
    """The staff JSON API's refusals, shaped like FastAPI's own ``{"detail": ...}``."""
    if not isinstance(error, GradeRefused):
        raise error
    return JSONResponse({"detail": error.detail}, status_code=error.status)


async def database_busy(request: Request, error: Exception) -> Response:
    """Every pooled connection stayed busy for the pool's whole wait: a clear "try again",
    not a bare 500. An upload's landed file is removed on the way out (api.intake)."""
    log.warning("no database connection free: answered 503", extra={"path": request.url.path, "error": str(error)})
    return JSONResponse({"detail": BUSY}, status_code=503, headers={"Retry-After": str(BUSY_RETRY_AFTER_SECONDS)})


def install(app: FastAPI) -> None:
    app.add_exception_handler(LoginRequired, login_required)
    app.add_exception_handler(PageNotFound, page_not_found)
    app.add_exception_handler(GradeRefused, grade_refused)
    app.add_exception_handler(PoolTimeout, database_busy)
