"""Course membership changes: the one path through handin that grants or removes rights.

Each change commits, then tells every router replica (core.access.invalidate_access)
so open sockets re-check what the user may see within seconds. Rows changed
straight in the database (an admin-system sync job) are caught by the routers'
periodic re-check instead (HANDIN_ROUTER__AUTHZ_RECHECK_SECONDS).
"""

from __future__ import annotations

import logging

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.access import invalidate_access
from core.db import transaction
from core.models import Enrolment

log = logging.getLogger(__name__)
ROLES = ("student", "staff")


async def announce(redis: Redis, user_id: int) -> None:
    """Tell the routers; a failure here is logged, never raised: the change is committed and the
    routers' periodic re-check picks it up."""
    try:
        await invalidate_access(redis, user_id)
    except (RedisError, OSError) as error:
        log.warning("rights change not announced to routers", extra={"user_id": user_id, "error": str(error)})


async def set_enrolment(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, user_id: int, course_id: int, role: str
) -> None:
    """Enrol a user in a course with `role`, or change the role they have there."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    async with transaction(sessions) as session:
        await enrol(session, user_id, course_id, role)
    await announce(redis, user_id)


async def enrol(session: AsyncSession, user_id: int, course_id: int, role: str) -> None:
    """``set_enrolment``'s change in the caller's transaction; the caller announces after commit."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    enrolment = await session.scalar(
        select(Enrolment).where(Enrolment.user_id == user_id, Enrolment.course_id == course_id)
    )
    if enrolment is None:
        session.add(Enrolment(user_id=user_id, course_id=course_id, role=role))
    else:
        enrolment.role = role
    await session.flush()


async def remove_enrolment(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, user_id: int, course_id: int
) -> bool:
    """Take a user out of a course; False when they were not in it."""
    async with transaction(sessions) as session:
        removed = await unenrol(session, user_id, course_id)
    await announce(redis, user_id)
    return removed


async def unenrol(session: AsyncSession, user_id: int, course_id: int) -> bool:
    """``remove_enrolment``'s change in the caller's transaction; the caller announces after commit."""
    removed = await session.execute(
        delete(Enrolment).where(Enrolment.user_id == user_id, Enrolment.course_id == course_id)
    )
    return bool(getattr(removed, "rowcount", 0))
