"""Who may see and publish what: the topic table of DESIGN.md, from the database.

| topic              | subscribe                          | publish                 |
|--------------------|------------------------------------|-------------------------|
| submission.<id>    | its owner; staff of its course     | nobody (workers only)   |
| assignment.<id>    | enrolled students; its staff       | its staff               |
| user.<id>          | that user                          | nobody                  |
| course.<id>        | members                            | members (class chat)    |
| staff.dashboard    | staff of any course                | nobody                  |
Service accounts may subscribe and publish everywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import keys
from core.models import Assignment, Enrolment, Submission, User

TOPIC_PATTERN = re.compile(r"(submission|assignment|user|course)\.(\d{1,18})|staff\.dashboard")
STUDENT, STAFF, SERVICE = "student", "staff", "service"


@dataclass(frozen=True)
class Principal:
    user_id: int
    role: str  # student | staff | service


async def principal_for(session: AsyncSession, user_id: int) -> Principal | None:
    user = await session.get(User, user_id)
    if user is None:
        return None
    if user.is_service:
        return Principal(user_id, SERVICE)
    staff = await session.scalar(
        select(Enrolment.id).where(Enrolment.user_id == user_id, Enrolment.role == STAFF).limit(1)
    )
    return Principal(user_id, STAFF if staff else STUDENT)


async def course_role(session: AsyncSession, user_id: int, course_id: int) -> str | None:
    role: str | None = await session.scalar(
        select(Enrolment.role).where(Enrolment.user_id == user_id, Enrolment.course_id == course_id)
    )
    return role


async def can_view_submission(session: AsyncSession, user_id: int, submission: Submission) -> bool:
    if submission.user_id == user_id:
        return True
    assignment = await session.get(Assignment, submission.assignment_id)
    return assignment is not None and await course_role(session, user_id, assignment.course_id) == STAFF


async def can_subscribe(session: AsyncSession, who: Principal, topic: str) -> bool:
    match = TOPIC_PATTERN.fullmatch(topic)
    if match is None:
        return False
    if who.role == SERVICE:
        return True
    if topic == keys.STAFF_DASHBOARD_TOPIC:
        return who.role == STAFF
    kind, ident = match.group(1), int(match.group(2))
    if kind == "user":
        return ident == who.user_id
    if kind == "submission":
        submission = await session.get(Submission, ident)
        return submission is not None and await can_view_submission(session, who.user_id, submission)
    if kind == "assignment":
        assignment = await session.get(Assignment, ident)
        return assignment is not None and await course_role(session, who.user_id, assignment.course_id) is not None
    return await course_role(session, who.user_id, ident) is not None  # course


async def can_publish(session: AsyncSession, who: Principal, topic: str) -> bool:
    match = TOPIC_PATTERN.fullmatch(topic)
    if match is None:
        return False
    if who.role == SERVICE:
        return True
    kind = match.group(1)
    if kind == "course":
        return await course_role(session, who.user_id, int(match.group(2))) is not None
    if kind == "assignment":
        assignment = await session.get(Assignment, int(match.group(2)))
        return assignment is not None and await course_role(session, who.user_id, assignment.course_id) == STAFF
    return False


async def invalidate_access(redis: Redis, user_id: int | None = None) -> None:
    """Tell every router replica to forget cached rights of a user (None: everyone).

    Call it after enrolment changes commit; routers re-check live subscriptions.
    """
    await redis.publish(keys.AUTHZ_INVALIDATE_CHANNEL, "*" if user_id is None else str(user_id))
