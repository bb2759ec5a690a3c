"""Deleting a submission deletes its similarity fingerprints, on both databases and both ways of
making the schema (``handin migrate`` and the models' create_all), also when the deletion cascades
from its assignment, course or student. The fingerprints table has no foreign keys for speed; this
is what keeps it from holding rows of submissions that are gone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.clock import utcnow
from core.db import make_engine, make_sessionmaker
from core.migrate import upgrade
from core.models import Assignment, Base, Course, Fingerprint, Submission, User
from core.similarity import index
from core.similarity.winnowing import Fingerprint as Print
from tests.conftest import empty_database


@pytest.fixture(params=["sqlite-migrated", "sqlite-models", "postgres-migrated", "postgres-models"])
async def session(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncSession]:
    kind, made_by = request.param.split("-")
    async with empty_database(kind, tmp_path) as url:
        engine = make_engine(url)
        try:
            if made_by == "migrated":
                await asyncio.to_thread(upgrade, url)
            else:
                async with engine.begin() as connection:
                    await connection.run_sync(Base.metadata.create_all)
            async with make_sessionmaker(engine)() as session:
                yield session
        finally:
            await engine.dispose()


async def _submission(session: AsyncSession, assignment: Assignment, student: User, attempt: int) -> Submission:
    submission = Submission(
        assignment_id=assignment.id, user_id=student.id, attempt=attempt, sha256="0" * 64, size=1,
        original_filename="essay.txt", content_type="text/plain", kind="text", storage_key=f"k{student.id}-{attempt}",
    )  # fmt: skip
    session.add(submission)
    await session.commit()  # the index is written on connections of its own
    await index.replace(
        make_sessionmaker(session.bind),
        assignment.id,
        submission.id,
        [Print(submission.id * 100 + n, n, n, n + 25) for n in range(50)],
    )
    return submission


async def _fingerprints_of(session: AsyncSession, *submissions: Submission) -> list[int]:
    return [
        int(await session.scalar(select(func.count()).where(Fingerprint.submission_id == s.id)) or 0)
        for s in submissions
    ]


async def test_fingerprints_go_with_their_submission_and_its_parents(session: AsyncSession) -> None:
    now = utcnow()
    courses = [Course(code=f"C{n}", title=f"Course {n}") for n in range(2)]
    ana, ben = (
        User(email="ana@cleanup.test", name="Ana", password_hash=""),
        User(email="ben@cleanup.test", name="Ben", password_hash=""),
    )
    session.add_all([*courses, ana, ben])
    await session.flush()
    assignments = [
        Assignment(
            course_id=course.id, title="Essay", opens_at=now, deadline=now + timedelta(days=1),
            cutoff_at=now + timedelta(days=1), max_bytes=1000, accepted_types=["text"], max_attempts=3,
        )
        for course in courses
    ]  # fmt: skip
    session.add_all(assignments)
    await session.flush()
    first, second = (
        await _submission(session, assignments[0], ana, 1),
        await _submission(session, assignments[0], ana, 2),
    )
    bens = await _submission(session, assignments[0], ben, 1)
    other_course = await _submission(session, assignments[1], ben, 1)
    await session.commit()
    assert await _fingerprints_of(session, first, second, bens, other_course) == [50, 50, 50, 50]

    await session.execute(delete(Submission).where(Submission.id == first.id))
    await session.commit()
    assert await _fingerprints_of(session, first, second, bens, other_course) == [0, 50, 50, 50]

    await session.execute(delete(User).where(User.id == ana.id))  # cascades to her submissions
    await session.commit()
    assert await _fingerprints_of(session, second, bens, other_course) == [0, 50, 50]

    await session.execute(delete(Course).where(Course.id == courses[0].id))  # to its assignment, then submissions
    await session.commit()
    assert await _fingerprints_of(session, bens, other_course) == [0, 50]
