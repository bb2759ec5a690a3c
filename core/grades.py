"""Marking and grade release.

Staff enter a grade and feedback per submission; other staff see marking
progress live (``marking.updated`` on ``assignment.<id>``, without grades:
students of the course may listen on that topic too).

Release is now, or at a set time through one deferred arq job per assignment
on the maintenance queue (job id ``keys.release_job_id``). The job carries the
time it was scheduled for and does nothing if the assignment's schedule has
since changed, so a cancelled or moved release can never fire late.

At release, in one transaction: the assignment is marked released (grades
become visible to students), ``assignment.<id>`` gets ``grades.released``
(the audit entry, with the staff member as actor), every enrolled student
gets one flash (dedupe key per assignment and student), and every graded
submission gets ``grade.released`` with its grade and feedback on
``submission.<id>`` unless that exact grade was already released. Releasing
twice therefore adds an audit entry and nothing else.

A grade entered or changed after release is visible at once and pushed to the
student's page the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from arq.connections import ArqRedis
from arq.constants import job_key_prefix, result_key_prefix, retry_key_prefix
from redis.asyncio import Redis
from sqlalchemy import and_, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys, marking
from core.clock import isoformat, utcnow
from core.events import EventBatch
from core.flash import FlashSpec, add_flash, existing_dedupe_keys
from core.models import Assignment, Enrolment, Event, Submission
from core.unit_of_work import SessionSource, unit_of_work

MAX_GRADE_LENGTH = 40
MAX_FEEDBACK_LENGTH = 20_000


class GradeRefused(Exception):
    """A request the caller may not make or that makes no sense; ``status`` is the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


@dataclass(frozen=True)
class ReleaseSummary:
    assignment_id: int
    released_at: datetime
    grades_sent: int
    flashes_created: int
    already_released: bool = False

    @property
    def detail(self) -> str:
        """What staff read after a release, including why nothing was sent."""
        if self.already_released and self.grades_sent == 0:
            return "All grades were already released: nothing new to send (0 grades sent, 0 students told)."
        if self.grades_sent == 0:
            return f"Released, but no grade is entered yet: 0 grades sent, {self.flashes_created} students told."
        return f"Released: {self.grades_sent} grades sent, {self.flashes_created} students told."


async def staff_assignment(session: AsyncSession, assignment_id: int, staff_id: int) -> Assignment:
    """The assignment if this user teaches its course; 404 otherwise (no existence leak)."""
    assignment = await session.get(Assignment, assignment_id)
    if assignment is None or not await _is_staff(session, staff_id, assignment.course_id):
        raise GradeRefused(404, "No such assignment.")
    return assignment


async def _is_staff(session: AsyncSession, user_id: int, course_id: int) -> bool:
    role = await session.scalar(
        select(Enrolment.role).where(Enrolment.user_id == user_id, Enrolment.course_id == course_id)
    )
    return role == "staff"


async def marking_progress(session: AsyncSession, assignment_id: int) -> dict[str, int]:
    """Marked of the attempts that count: each student's latest (a replaced attempt is not counted)."""
    latest = (
        select(Submission.user_id, func.max(Submission.attempt).label("attempt"))
        .where(Submission.assignment_id == assignment_id)
        .group_by(Submission.user_id)
        .subquery()
    )
    total, graded = (
        await session.execute(
            select(func.count(Submission.id), func.count(Submission.grade))
            .join(latest, and_(Submission.user_id == latest.c.user_id, Submission.attempt == latest.c.attempt))
            .where(Submission.assignment_id == assignment_id)
        )
    ).one()
    return {"submissions": int(total), "graded": int(graded)}


def grade_payload(submission: Submission) -> dict[str, Any]:
    return {"submission_id": submission.id, "grade": submission.grade, "feedback": submission.feedback or ""}


async def enter_grade(
    source: SessionSource,
    redis: Redis,
    submission_id: int,
    staff_id: int,
    grade: str,
    feedback: str,
) -> Submission:
    grade, feedback = grade.strip(), feedback.strip()
    if len(grade) > MAX_GRADE_LENGTH:
        raise GradeRefused(422, f"A grade is at most {MAX_GRADE_LENGTH} characters.")
    if len(feedback) > MAX_FEEDBACK_LENGTH:
        raise GradeRefused(422, f"Feedback is at most {MAX_FEEDBACK_LENGTH} characters.")
    async with unit_of_work(source, redis) as work:
        session = work.session
        submission = await session.scalar(select(Submission).where(Submission.id == submission_id).with_for_update())
        if submission is None:
            raise GradeRefused(404, "No such submission.")
        assignment = await staff_assignment(session, submission.assignment_id, staff_id)
        submission.grade = grade or None
        submission.feedback = feedback or None
        submission.graded_by = staff_id if grade else None
        await session.flush()
        progress = await marking_progress(session, assignment.id)
        await work.emit(
            keys.assignment_topic(assignment.id),
            "marking.updated",
            {"submission_id": submission.id, "marked": submission.grade is not None, **progress},
            actor=f"staff:{staff_id}",
            actor_id=staff_id,
        )
        await marking.graded(work, submission, staff_id)
        if assignment.grades_released_at is not None:
            await _send_grades(work, [submission], staff_id)
    return submission


async def release_grades(
    source: SessionSource,
    redis: Redis,
    assignment_id: int,
    staff_id: int,
    *,
    scheduled_for: datetime | None = None,
    check_staff: bool = False,
) -> ReleaseSummary:
    """Release now. ``scheduled_for`` marks a release made by the deferred job;
    ``check_staff`` refuses (404) unless ``staff_id`` teaches the course, in the same transaction."""
    now = utcnow()
    async with unit_of_work(source, redis) as work:
        session = work.session
        if check_staff:
            await staff_assignment(session, assignment_id, staff_id)
        # populate_existing: the row as it is under the lock, not as the rights check read it.
        assignment = await session.scalar(
            select(Assignment)
            .where(Assignment.id == assignment_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        if assignment is None:
            raise GradeRefused(404, "No such assignment.")
        already = assignment.grades_released_at is not None
        assignment.grades_released_at = assignment.grades_released_at or now
        assignment.release_scheduled_at = None
        graded = list(
            await session.scalars(
                select(Submission)
                .where(Submission.assignment_id == assignment_id, Submission.grade.is_not(None))
                .order_by(Submission.id)
            )
        )
        sent = await _send_grades(work, graded, staff_id)
        flashes = await _flash_students(work, assignment, graded)
        data: dict[str, Any] = {
            "assignment_id": assignment_id,
            "released_at": isoformat(assignment.grades_released_at),
            "grades_sent": sent,
            "flashes_created": flashes,
            "already_released": already,
        }
        data["detail"] = ReleaseSummary(assignment_id, now, sent, flashes, already).detail
        if scheduled_for is not None:
            data["scheduled_for"] = isoformat(scheduled_for)
        await work.emit(
            keys.assignment_topic(assignment_id), "grades.released", data, actor=f"staff:{staff_id}", actor_id=staff_id
        )
        released_at = assignment.grades_released_at
    return ReleaseSummary(assignment_id, released_at, sent, flashes, already)


async def _send_grades(batch: EventBatch, submissions: list[Submission], staff_id: int) -> int:
    """A ``grade.released`` per submission, skipping ones whose exact grade already went out."""
    if not submissions:
        return 0
    topics = {keys.submission_topic(s.id): s for s in submissions}
    last_sent: dict[str, dict[str, Any]] = {}
    rows = await batch.session.scalars(
        select(Event)
        .where(Event.topic.in_(list(topics)), Event.type == "grade.released")
        .order_by(Event.topic, Event.seq)
    )
    for row in rows:
        last_sent[row.topic] = row.data
    sent = 0
    for topic, submission in topics.items():
        payload = grade_payload(submission)
        previous = last_sent.get(topic)
        if previous is not None and (previous.get("grade"), previous.get("feedback")) == (
            payload["grade"],
            payload["feedback"],
        ):
            continue
        await batch.emit(topic, "grade.released", payload, actor=f"staff:{staff_id}", actor_id=staff_id)
        sent += 1
    return sent


async def _flash_students(batch: EventBatch, assignment: Assignment, graded: list[Submission]) -> int:
    students = list(
        await batch.session.scalars(
            select(Enrolment.user_id).where(Enrolment.course_id == assignment.course_id, Enrolment.role == "student")
        )
    )
    dedupe = {user_id: f"grades-released:{assignment.id}:{user_id}" for user_id in students}
    known = await existing_dedupe_keys(batch.session, list(dedupe.values()))
    latest: dict[int, int] = {}
    for submission in graded:
        latest[submission.user_id] = max(latest.get(submission.user_id, 0), submission.id)
    created = 0
    for user_id in students:
        submission_id = latest.get(user_id)
        spec = FlashSpec(
            text=f"Grades for “{assignment.title}” are released.",
            kind="success",
            link_url=f"/submissions/{submission_id}" if submission_id else f"/assignments/{assignment.id}",
            link_text="See your grade" if submission_id else "Open the assignment",
            auto_hide_seconds=None,
            dedupe_key=dedupe[user_id],
        )
        if await add_flash(batch, user_id, spec, known=known) is not None:
            created += 1
    return created


# Scheduling: a deferred job on the maintenance queue, one per assignment.


async def _drop_release_job(arq: ArqRedis, assignment_id: int) -> None:
    """Remove a not-yet-started release job, so a new one with the same id can be queued."""
    job_id = keys.release_job_id(assignment_id)
    await arq.zrem(keys.queue_name(keys.MAINTENANCE_TASK), job_id)
    await arq.delete(job_key_prefix + job_id, result_key_prefix + job_id, retry_key_prefix + job_id)


async def schedule_release(
    source: SessionSource, arq: ArqRedis, assignment_id: int, staff_id: int, at: datetime
) -> tuple[datetime, int]:
    """Schedule the release at ``at``; returns it and the seq of its event on the assignment's topic."""
    if at.tzinfo is None:
        raise GradeRefused(422, "Give the release time with a time zone.")
    if at <= utcnow():
        raise GradeRefused(422, "Pick a release time in the future, or release now.")
    # Published after the job is queued, so a page told of the schedule finds the job there.
    async with unit_of_work(source, None) as work:
        assignment = await staff_assignment(work.session, assignment_id, staff_id)
        assignment.release_scheduled_at = at
        scheduled = await work.emit(
            keys.assignment_topic(assignment_id),
            "grades.release_scheduled",
            {"assignment_id": assignment_id, "at": isoformat(at)},
            actor=f"staff:{staff_id}",
            actor_id=staff_id,
        )
    await _drop_release_job(arq, assignment_id)
    await arq.enqueue_job(
        keys.RELEASE_GRADES_FUNCTION,
        assignment_id,
        staff_id,
        isoformat(at),
        _job_id=keys.release_job_id(assignment_id),
        _queue_name=keys.queue_name(keys.MAINTENANCE_TASK),
        _defer_until=at,
    )
    await work.publish(arq)
    return at, scheduled.seq


async def cancel_release(source: SessionSource, arq: ArqRedis, assignment_id: int, staff_id: int) -> int | None:
    """Cancel a scheduled release; the seq of its event on the assignment's topic, None if none was
    scheduled."""
    # Published after the job is gone, as for scheduling.
    async with unit_of_work(source, None) as work:
        assignment = await staff_assignment(work.session, assignment_id, staff_id)
        if assignment.release_scheduled_at is None:
            return None
        cancelled = await work.emit(
            keys.assignment_topic(assignment_id),
            "grades.release_cancelled",
            {"assignment_id": assignment_id, "was_at": isoformat(assignment.release_scheduled_at)},
            actor=f"staff:{staff_id}",
            actor_id=staff_id,
        )
        assignment.release_scheduled_at = None
    await _drop_release_job(arq, assignment_id)
    await work.publish(arq)
    return cancelled.seq


async def release_now(source: SessionSource, arq: ArqRedis, assignment_id: int, staff_id: int) -> ReleaseSummary:
    """Staff pressed "release now": check rights and release in one transaction, then drop any scheduled job
    (a job that runs meanwhile finds the schedule cleared and does nothing)."""
    summary = await release_grades(source, arq, assignment_id, staff_id, check_staff=True)
    await _drop_release_job(arq, assignment_id)
    return summary


async def release_grades_job(ctx: dict[str, Any], assignment_id: int, staff_id: int, scheduled_for: str) -> str:
    """The maintenance worker's deferred job: release if the schedule still says so."""
    sessions: async_sessionmaker[AsyncSession] = ctx["sessions"]
    async with sessions() as session:
        assignment = await session.get(Assignment, assignment_id)
        current = assignment.release_scheduled_at if assignment is not None else None
    if current is None or isoformat(current) != scheduled_for:
        return "stale schedule: nothing to do"
    summary = await release_grades(
        sessions, ctx["redis"], assignment_id, staff_id, scheduled_for=datetime.fromisoformat(scheduled_for)
    )
    return f"released: {summary.grades_sent} grades, {summary.flashes_created} flashes"
