"""JSON shapes the API answers with, built from database rows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import keys
from core.clock import isoformat, utcnow
from core.models import Assignment, Submission, SubmissionStep, TopicSeq, User
from core.pipeline import STEPS_BY_NAME


def _time(moment: datetime | None) -> str | None:
    return isoformat(moment) if moment is not None else None


async def topic_seq(session: AsyncSession, topic: str) -> int:
    """The latest seq on a topic: render at this seq, then fetch/subscribe for what follows."""
    return (await session.scalar(select(TopicSeq.seq).where(TopicSeq.topic == topic))) or 0


def user_view(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name}


def step_view(step: SubmissionStep) -> dict[str, Any]:
    known = STEPS_BY_NAME.get(step.step)
    return {
        "step": step.step,
        "label": known.label if known else step.step,
        "state": step.state,
        "attempts": step.attempts,
        "queued_at": _time(step.queued_at),
        "started_at": _time(step.started_at),
        "finished_at": _time(step.finished_at),
        "result": step.result or {},
        "error": step.error,
    }


async def submission_view(session: AsyncSession, submission: Submission, viewer_is_staff: bool) -> dict[str, Any]:
    steps = await session.scalars(
        select(SubmissionStep).where(SubmissionStep.submission_id == submission.id).order_by(SubmissionStep.id)
    )
    assignment = await session.get(Assignment, submission.assignment_id)
    topic = keys.submission_topic(submission.id)
    released = (
        assignment is not None
        and assignment.grades_released_at is not None
        and assignment.grades_released_at <= utcnow()
    )
    view: dict[str, Any] = {
        "id": submission.id,
        "assignment_id": submission.assignment_id,
        "assignment_title": assignment.title if assignment else None,
        "user_id": submission.user_id,
        "attempt": submission.attempt,
        "late": submission.late,
        "status": submission.status,
        "sha256": submission.sha256,
        "size": submission.size,
        "original_filename": submission.original_filename,
        "content_type": submission.content_type,
        "kind": submission.kind,
        "received_at": _time(submission.received_at),
        "completed_at": _time(submission.completed_at),
        "topic": topic,
        "seq": await topic_seq(session, topic),
        "steps": [step_view(step) for step in steps],
        "file_url": f"/api/submissions/{submission.id}/file",
        "thumbnail_url": f"/api/submissions/{submission.id}/thumbnail" if submission.thumbnail_key else None,
        "grade": None,
        "feedback": None,
    }
    # Students see a grade only once it is released; staff always.
    if viewer_is_staff or released:
        view["grade"], view["feedback"] = submission.grade, submission.feedback
    return view
