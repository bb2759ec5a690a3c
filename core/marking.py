"""Marking progress: who is marking which script, and where a student's submission is in marking.

A member of staff claims a submission ("I'm marking this", a ``MarkingClaim``
row), so a second marker sees "being marked by X" and must confirm to take it
over. Entering a grade ends the claim. Each change is one ``marking.state``
event on ``submission.<id>``:

- ``queued``: waiting for a marker (no claim, no grade);
- ``marking``: claimed by ``marker_id``/``marker_name``;
- ``marked``: a grade is entered (the grade itself goes out only at release).

Staff see the whole event; the owner sees only ``submission_id`` and
``state`` (core.audience): never who marks it, nor a grade before release.
How far the assignment's marking has got (n of m latest attempts marked) is
``marking.updated`` on ``assignment.<id>`` (core.grades), whose counts every
member sees.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import keys
from core.access import STAFF, course_role
from core.clock import isoformat, utcnow
from core.events import EventBatch
from core.models import Assignment, MarkingClaim, Submission, User
from core.unit_of_work import SessionSource, unit_of_work

STATE_TYPE = "marking.state"
QUEUED, MARKING, MARKED = "queued", "marking", "marked"


class MarkingRefused(Exception):
    """``status`` is the HTTP answer; ``marker`` names who holds the claim when that is the reason."""

    def __init__(self, status: int, detail: str, marker: dict[str, Any] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.marker = marker


@dataclass(frozen=True)
class MarkingState:
    state: str
    marker_id: int | None = None
    marker_name: str | None = None
    since: datetime | None = None

    def as_dict(self, submission_id: int) -> dict[str, Any]:
        return {
            "submission_id": submission_id,
            "state": self.state,
            "marker_id": self.marker_id,
            "marker_name": self.marker_name,
            "since": isoformat(self.since) if self.since else None,
        }


async def state_of(session: AsyncSession, submission: Submission) -> MarkingState:
    """Where a submission is in marking, from the database."""
    if submission.grade is not None:
        return MarkingState(MARKED)
    claim = await session.get(MarkingClaim, submission.id)
    if claim is None:
        return MarkingState(QUEUED)
    marker = await session.get(User, claim.staff_id)
    return MarkingState(MARKING, claim.staff_id, marker.name if marker else None, claim.claimed_at)


async def claims_of(session: AsyncSession, submission_ids: list[int]) -> dict[int, str]:
    """Submission id → the name of who is marking it, for the staff list."""
    if not submission_ids:
        return {}
    rows = await session.execute(
        select(MarkingClaim.submission_id, User.name)
        .join(User, User.id == MarkingClaim.staff_id)
        .where(MarkingClaim.submission_id.in_(submission_ids))
    )
    return {int(submission_id): str(name) for submission_id, name in rows.all()}


async def _staff_submission(session: AsyncSession, submission_id: int, staff_id: int) -> Submission:
    """The submission, locked, if this user teaches its course; 404 otherwise (no existence leak)."""
    submission = await session.scalar(select(Submission).where(Submission.id == submission_id).with_for_update())
    assignment = await session.get(Assignment, submission.assignment_id) if submission is not None else None
    if submission is None or assignment is None or await course_role(session, staff_id, assignment.course_id) != STAFF:
        raise MarkingRefused(404, "No such submission.")
    return submission


async def emit_state(batch: EventBatch, submission: Submission, staff_id: int) -> MarkingState:
    """Record the submission's current marking state on its topic (in the caller's transaction), and on
    the course's staff topic, where the staff submissions table shows who is marking what, live."""
    state = await state_of(batch.session, submission)
    await batch.emit(
        keys.submission_topic(submission.id),
        STATE_TYPE,
        state.as_dict(submission.id),
        actor=f"staff:{staff_id}",
        actor_id=staff_id,
    )
    assignment = await batch.session.get(Assignment, submission.assignment_id)
    if assignment is not None:
        await batch.emit(
            keys.course_staff_topic(assignment.course_id),
            STATE_TYPE,
            {**state.as_dict(submission.id), "assignment_id": assignment.id},
            actor=f"staff:{staff_id}",
            actor_id=staff_id,
        )
    return state


async def claim(
    source: SessionSource, redis: Redis, submission_id: int, staff_id: int, *, take_over: bool = False
) -> MarkingState:
    """Staff ``staff_id`` marks this submission now. Someone else's claim is refused (409, naming them)
    unless ``take_over``; claiming one's own again changes nothing."""
    async with unit_of_work(source, redis) as work:
        session = work.session
        submission = await _staff_submission(session, submission_id, staff_id)
        if submission.grade is not None and not take_over:
            raise MarkingRefused(409, "This submission is marked already; confirm to mark it again.")
        current = await session.get(MarkingClaim, submission_id)
        if current is not None and current.staff_id == staff_id:
            return await state_of(session, submission)
        if current is not None and not take_over:
            held = await state_of(session, submission)
            raise MarkingRefused(
                409,
                f"Being marked by {held.marker_name}; confirm to take it over.",
                {"marker_id": held.marker_id, "marker_name": held.marker_name},
            )
        if current is None:
            session.add(MarkingClaim(submission_id=submission_id, staff_id=staff_id, claimed_at=utcnow()))
        else:
            current.staff_id, current.claimed_at = staff_id, utcnow()
        await session.flush()
        return await emit_state(work, submission, staff_id)


async def unclaim(source: SessionSource, redis: Redis, submission_id: int, staff_id: int) -> MarkingState:
    """Give a submission back to the queue (any staff of the course may: a marker who left it open)."""
    async with unit_of_work(source, redis) as work:
        session = work.session
        submission = await _staff_submission(session, submission_id, staff_id)
        current = await session.get(MarkingClaim, submission_id)
        if current is None:
            return await state_of(session, submission)
        await session.delete(current)
        await session.flush()
        return await emit_state(work, submission, staff_id)


async def graded(batch: EventBatch, submission: Submission, staff_id: int) -> None:
    """A grade was entered or cleared (core.grades.enter_grade): the claim ends, the owner is told."""
    current = await batch.session.get(MarkingClaim, submission.id)
    if current is not None and submission.grade is not None:
        await batch.session.delete(current)
        await batch.session.flush()
    await emit_state(batch, submission, staff_id)
