"""Who may see and publish what: the topic table of DESIGN.md, from the database.

| topic              | subscribe (audience)                          | publish                 |
|--------------------|-----------------------------------------------|-------------------------|
| submission.<id>    | its owner (owner); staff of its course (staff) | nobody (workers only)   |
| assignment.<id>    | enrolled students (member); its staff (staff)  | its staff               |
| user.<id>          | that user (owner)                             | nobody                  |
| course.<id>        | students (member); its staff (staff)          | members (class chat)    |
| course.<id>.staff  | staff of that course (staff)                  | nobody                  |
| fleet              | staff of any course (staff)                   | nobody                  |
Service accounts may subscribe and publish everywhere, as staff.

Subscribing is answered by ``audience_for``: ``None`` refuses, anything else
names the projection (core.audience) the subscriber gets. The router and the
HTTP views (topic catch-up, submission JSON and events) ask the same function.
Topic names must be canonical (core.keys.parse_topic): ``submission.02`` is refused.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from core import keys
from core.audience import Audience
from core.models import Assignment, Enrolment, Submission, User

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
    return await submission_audience(session, user_id, submission) is not None


async def submission_audience(session: AsyncSession, user_id: int, submission: Submission) -> Audience | None:
    """Staff of its course see a submission whole (also their own test upload); its owner as owner."""
    assignment = await session.get(Assignment, submission.assignment_id)
    if assignment is not None and await course_role(session, user_id, assignment.course_id) == STAFF:
        return Audience.STAFF
    return Audience.OWNER if submission.user_id == user_id else None


def _course_audience(role: str | None) -> Audience | None:
    if role == STAFF:
        return Audience.STAFF
    return Audience.MEMBER if role is not None else None


async def audience_for(session: AsyncSession, who: Principal, topic: str) -> Audience | None:
    """Which audience ``who`` is on ``topic``: None when they may not subscribe at all.

    The rules live once, in ``decide_audience``; this reads the rights and facts it needs now.
    """
    rights, facts = await _rights_and_facts(session, who, topic)
    return None if rights is None else decide_audience(rights, topic, facts)


async def can_subscribe(session: AsyncSession, who: Principal, topic: str) -> bool:
    return await audience_for(session, who, topic) is not None


async def can_publish(session: AsyncSession, who: Principal, topic: str) -> bool:
    rights, facts = await _rights_and_facts(session, who, topic)
    return rights is not None and decide_publish(rights, topic, facts)


async def _rights_and_facts(
    session: AsyncSession, who: Principal, topic: str
) -> tuple[Rights | None, TopicFacts | None]:
    if keys.parse_topic(topic) is None:
        return None, None
    rights = (await rights_of(session, [who.user_id])).get(who.user_id)
    wanted = needs_facts(topic)
    facts = (await facts_of(session, [wanted])).get(wanted) if wanted is not None and rights is not None else None
    return rights, facts


# Deciding from memory: what the router keeps per user and per topic ----------------------------


@dataclass(frozen=True)
class Rights:
    """Everything a topic decision needs to know about a user: service or not, and the role per course."""

    user_id: int
    is_service: bool
    courses: Mapping[int, str] = field(default_factory=dict)  # course id -> student | staff

    @property
    def principal(self) -> Principal:
        if self.is_service:
            return Principal(self.user_id, SERVICE)
        return Principal(self.user_id, STAFF if STAFF in self.courses.values() else STUDENT)


@dataclass(frozen=True)
class TopicFacts:
    """What a topic's id leads to, fixed for the row's life: an assignment's course, a submission's
    owner and course. None: no such row (refused)."""

    course_id: int | None = None
    owner_id: int | None = None


# Built once with the ids as an expanding parameter: the router runs these for every batch of
# handshakes, and a statement built per call costs SQLAlchemy more CPU than the answer.
RIGHTS_OF_USERS = (
    select(User.id, User.is_service, Enrolment.course_id, Enrolment.role)
    .outerjoin(Enrolment, Enrolment.user_id == User.id)
    .where(User.id.in_(bindparam("ids", expanding=True)))
)
ASSIGNMENT_FACTS = select(Assignment.id, Assignment.course_id).where(
    Assignment.id.in_(bindparam("ids", expanding=True))
)
SUBMISSION_FACTS = (
    select(Submission.id, Submission.user_id, Assignment.course_id)
    .join(Assignment, Assignment.id == Submission.assignment_id)
    .where(Submission.id.in_(bindparam("ids", expanding=True)))
)


async def rights_of(session: AsyncSession | AsyncConnection, user_ids: Collection[int]) -> dict[int, Rights]:
    """The rights of many users in one statement; a user who does not exist is absent."""
    return rights_from(await session.execute(RIGHTS_OF_USERS, {"ids": list(user_ids)}))


def rights_from(rows: Iterable[Any]) -> dict[int, Rights]:
    """Rights from (user id, is service, course id, role) rows: one per enrolment, or one with no course."""
    courses: dict[int, dict[int, str]] = {}
    service: dict[int, bool] = {}
    for user_id, is_service, course_id, role in rows:
        service[user_id] = bool(is_service)
        roles = courses.setdefault(user_id, {})
        if course_id is not None and role is not None:
            roles[course_id] = role
    return {user_id: Rights(user_id, service[user_id], courses[user_id]) for user_id in service}


def needs_facts(topic: str) -> tuple[str, int] | None:
    """("assignment" | "submission", id) when deciding ``topic`` needs that row's facts."""
    parsed = keys.parse_topic(topic)
    if parsed is None or parsed[0] not in ("assignment", "submission") or parsed[1] is None:
        return None
    return parsed[0], parsed[1]


async def facts_of(
    session: AsyncSession | AsyncConnection, wanted: Collection[tuple[str, int]]
) -> dict[tuple[str, int], TopicFacts]:
    """Facts of many assignments and submissions, one statement per kind; missing rows are absent."""
    found: dict[tuple[str, int], TopicFacts] = {}
    assignments = [ident for kind, ident in wanted if kind == "assignment"]
    submissions = [ident for kind, ident in wanted if kind == "submission"]
    if assignments:
        rows = await session.execute(ASSIGNMENT_FACTS, {"ids": assignments})
        found.update({("assignment", ident): TopicFacts(course_id=course) for ident, course in rows})
    if submissions:
        rows = await session.execute(SUBMISSION_FACTS, {"ids": submissions})
        found.update({("submission", ident): TopicFacts(course, owner) for ident, owner, course in rows})
    return found


def decide_audience(rights: Rights, topic: str, facts: TopicFacts | None) -> Audience | None:
    """Which audience a user is on a topic, given their rights and the topic's facts (None: refused).

    The one table of topic rights: ``audience_for`` reads what it needs and asks here; the router
    asks here from what it keeps in memory.
    """
    parsed = keys.parse_topic(topic)
    if parsed is None:
        return None
    who = rights.principal
    if who.role == SERVICE:
        return Audience.STAFF
    kind, ident = parsed
    if kind == keys.FLEET_TOPIC or ident is None:
        return Audience.STAFF if who.role == STAFF else None
    if kind == "user":
        return Audience.OWNER if ident == who.user_id else None
    if kind in ("submission", "assignment"):
        if facts is None or facts.course_id is None:
            return None
        role = rights.courses.get(facts.course_id)
        if kind == "assignment":
            return _course_audience(role)
        if role == STAFF:
            return Audience.STAFF
        return Audience.OWNER if facts.owner_id == who.user_id else None
    role = rights.courses.get(ident)
    if kind == keys.COURSE_STAFF:
        return Audience.STAFF if role == STAFF else None
    return _course_audience(role)


def decide_publish(rights: Rights, topic: str, facts: TopicFacts | None) -> bool:
    """``can_publish`` from memory."""
    parsed = keys.parse_topic(topic)
    if parsed is None:
        return False
    if rights.is_service:
        return True
    kind, ident = parsed
    if ident is None:
        return False
    if kind == "course":
        return rights.courses.get(ident) is not None
    if kind == "assignment":
        return facts is not None and facts.course_id is not None and rights.courses.get(facts.course_id) == STAFF
    return False


async def invalidate_access(redis: Redis, user_id: int | None = None) -> None:
    """Tell every router replica to forget cached rights of a user (None: everyone).

    Call it after enrolment changes commit; routers re-check live subscriptions.
    """
    await redis.publish(keys.AUTHZ_INVALIDATE_CHANNEL, "*" if user_id is None else str(user_id))
