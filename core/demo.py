"""Demo data for `make run`: one course, one open assignment, two students and a member of staff.

Idempotent: running it again changes nothing that exists. It assumes the
schema is there (`handin migrate` runs first).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core.auth import hash_password
from core.clock import utcnow
from core.db import make_engine, make_sessionmaker, transaction
from core.membership import announce
from core.models import Assignment, Course, Enrolment, User
from core.settings import Settings, get_settings

COURSE_CODE = "DEMO101"
ASSIGNMENT_TITLE = "Essay 1: Asynchronous systems"


@dataclass(frozen=True)
class DemoUser:
    email: str
    name: str
    password: str
    role: str


DEMO_USERS = (
    DemoUser("student@handin.local", "Sam Student", "student-demo", "student"),
    DemoUser("student2@handin.local", "Alex Student", "student2-demo", "student"),
    DemoUser("staff@handin.local", "Pat Lecturer", "staff-demo", "staff"),
)


async def seed_demo(settings: Settings | None = None, print_credentials: bool = False) -> int:
    """Create what is missing of the demo data; returns the demo assignment's id."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    try:
        async with transaction(make_sessionmaker(engine)) as session:
            course = await _course(session)
            assignment_id = await _assignment(session, course)
            enrolled = [await _enrolled_user(session, course, demo) for demo in DEMO_USERS]
    finally:
        await engine.dispose()
    redis = Redis.from_url(settings.redis_url, socket_connect_timeout=2, socket_timeout=2)
    try:
        for user_id in filter(None, enrolled):  # rights granted: open sockets re-check them
            await announce(redis, user_id)
    finally:
        await redis.aclose()
    if print_credentials:
        print(f"Demo course {COURSE_CODE}, assignment #{assignment_id} ({ASSIGNMENT_TITLE!r}). Log in as:")
        for demo in DEMO_USERS:
            print(f"  {demo.role:8} {demo.email:24} password: {demo.password}")
    return assignment_id


async def _course(session: AsyncSession) -> Course:
    course = await session.scalar(select(Course).where(Course.code == COURSE_CODE))
    if course is None:
        course = Course(code=COURSE_CODE, title="Demonstrating handin")
        session.add(course)
        await session.flush()
    return course


async def _assignment(session: AsyncSession, course: Course) -> int:
    existing = await session.scalar(
        select(Assignment.id).where(Assignment.course_id == course.id, Assignment.title == ASSIGNMENT_TITLE)
    )
    if existing is not None:
        return existing
    now = utcnow()
    assignment = Assignment(
        course_id=course.id,
        title=ASSIGNMENT_TITLE,
        description="Upload a PDF, Word document, image or text file. Three attempts; the last one counts.",
        opens_at=now - timedelta(minutes=5),
        deadline=now + timedelta(days=7),
        cutoff_at=now + timedelta(days=8),
        max_bytes=20 * 1024 * 1024,
        accepted_types=["pdf", "text", "image", "docx"],
        max_attempts=3,
    )
    session.add(assignment)
    await session.flush()
    return assignment.id


async def _enrolled_user(session: AsyncSession, course: Course, demo: DemoUser) -> int | None:
    """The user's id when this enrolled them, else None."""
    user = await session.scalar(select(User).where(User.email == demo.email))
    if user is None:
        user = User(email=demo.email, name=demo.name, password_hash=hash_password(demo.password))
        session.add(user)
        await session.flush()
    enrolled = await session.scalar(
        select(Enrolment.id).where(Enrolment.user_id == user.id, Enrolment.course_id == course.id)
    )
    if enrolled is None:
        session.add(Enrolment(user_id=user.id, course_id=course.id, role=demo.role))
        await session.flush()
        return user.id
    return None
