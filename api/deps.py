"""Request dependencies: settings, database, Redis, storage and the logged-in user.

Use the ``Annotated`` aliases in route signatures, e.g.
``async def me(user: CurrentUser, session: SessionDep)``.

Pages check who may see them with dependencies that raise: ``PageUser``
raises ``LoginRequired`` (answered with a redirect to the login page) and
``StaffCourse``/``StaffAssignment``/``StaffSubmission`` raise ``PageNotFound``
(answered with the not-found page, the same for "missing" and "not yours").
The handlers are in ``api.errors``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Annotated, Any

from arq.connections import ArqRedis
from fastapi import Depends, HTTPException, Request, status
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.auth import TokenError, unsign
from core.clock import utcnow
from core.db import entities_from, entity_columns, rows_of
from core.models import Assignment, Course, Enrolment, Submission, User, WebSession
from core.settings import Settings
from core.storage import Storage

SESSION_COOKIE = "handin_session"
WEB_SESSION_PURPOSE = "web-session"


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    return sessions


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A short-lived session for one request's reads and small writes."""
    async with get_sessions(request)() as session:
        yield session


def _app_state(name: str) -> Callable[[Request], Awaitable[Any]]:
    """A dependency answering one of the app's shared objects.

    A coroutine, not a plain function: FastAPI runs a plain function dependency in its
    thread pool, a thread hop per dependency per request for an attribute read.
    """

    async def dependency(request: Request) -> Any:
        return getattr(request.app.state, name)

    return dependency


SettingsDep = Annotated[Settings, Depends(_app_state("settings"))]
SessionsDep = Annotated[async_sessionmaker[AsyncSession], Depends(_app_state("sessions"))]
SessionDep = Annotated[AsyncSession, Depends(get_session)]
RedisDep = Annotated[ArqRedis, Depends(_app_state("redis"))]
StorageDep = Annotated[Storage, Depends(_app_state("storage"))]


def not_logged_in(detail: str = "You are not logged in.") -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, detail)


async def optional_web_session(request: Request) -> WebSession | None:
    """The live web session named by the cookie, or None (no cookie, forged, expired, logged out).

    Opens and closes its own database session, so a long upload never holds a
    connection (or SQLite's write lock) just for having been authenticated.
    """
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    settings = get_settings(request)
    try:
        session_id = str(unsign(cookie, settings.secret_key, WEB_SESSION_PURPOSE)["sid"])
    except (TokenError, KeyError):
        return None
    found = await _web_session_and_user(get_sessions(request), session_id)
    if found is None:
        return None
    web_session, user = found
    if web_session.revoked_at is not None or web_session.expires_at <= utcnow():
        return None
    request.state.web_session_user = user
    return web_session


_WEB_SESSION_AND_USER = (
    select(*entity_columns(WebSession, User))
    .join_from(WebSession, User, User.id == WebSession.user_id)
    .where(WebSession.id == bindparam("session_id"))
)


async def _web_session_and_user(
    sessions: async_sessionmaker[AsyncSession], session_id: str
) -> tuple[WebSession, User] | None:
    """One round trip for both: it runs on every authenticated request, uploads included. On
    PostgreSQL a statement on its own, on the pool's asyncpg connection (core.db.rows_of)."""
    rows = await rows_of(sessions, _WEB_SESSION_AND_USER, {"session_id": session_id})
    if not rows:
        return None
    web_session, user = entities_from(rows[0], WebSession, User)
    return web_session, user


async def current_web_session(
    web_session: Annotated[WebSession | None, Depends(optional_web_session)],
) -> WebSession:
    if web_session is None:
        raise not_logged_in()
    return web_session


async def optional_user(
    request: Request, web_session: Annotated[WebSession | None, Depends(optional_web_session)]
) -> User | None:
    if web_session is None:
        return None
    user: User | None = request.state.web_session_user
    return user


async def current_user(user: Annotated[User | None, Depends(optional_user)]) -> User:
    if user is None:
        raise not_logged_in()
    return user


CurrentWebSession = Annotated[WebSession, Depends(current_web_session)]
OptionalWebSession = Annotated[WebSession | None, Depends(optional_web_session)]
CurrentUser = Annotated[User, Depends(current_user)]
OptionalUser = Annotated[User | None, Depends(optional_user)]


# Pages: who may see them ---------------------------------------------------------------------------


class LoginRequired(Exception):
    """A page needs a logged-in user: answered with a redirect to the login page and back."""


class PageNotFound(Exception):
    """Missing or not the viewer's to see: answered with the not-found page naming ``what``."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


async def page_user(user: OptionalUser) -> User:
    if user is None:
        raise LoginRequired()
    return user


PageUser = Annotated[User, Depends(page_user)]


async def is_staff_of(session: AsyncSession, user_id: int, course_id: int) -> bool:
    role = await session.scalar(
        select(Enrolment.role).where(Enrolment.user_id == user_id, Enrolment.course_id == course_id)
    )
    return role == "staff"


async def staff_course(course_id: int, user: PageUser, session: SessionDep) -> Course:
    course = await session.get(Course, course_id)
    if course is None or not await is_staff_of(session, user.id, course_id):
        raise PageNotFound("course")
    return course


async def staff_assignment(assignment_id: int, user: PageUser, session: SessionDep) -> Assignment:
    assignment = await session.get(Assignment, assignment_id)
    if assignment is None or not await is_staff_of(session, user.id, assignment.course_id):
        raise PageNotFound("assignment")
    return assignment


async def staff_submission(submission_id: int, user: PageUser, session: SessionDep) -> Submission:
    submission = await session.get(Submission, submission_id)
    assignment = await session.get(Assignment, submission.assignment_id) if submission is not None else None
    if submission is None or assignment is None or not await is_staff_of(session, user.id, assignment.course_id):
        raise PageNotFound("submission")
    return submission


StaffCourse = Annotated[Course, Depends(staff_course)]
StaffAssignment = Annotated[Assignment, Depends(staff_assignment)]
StaffSubmission = Annotated[Submission, Depends(staff_submission)]
