"""JSON shapes the API answers with, built from database rows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from core import audience, keys, wording
from core.audience import Audience
from core.clock import isoformat, utcnow
from core.models import Assignment, Submission, SubmissionStep, TopicSeq, User
from core.pipeline import STEP_NAMES, STEPS_BY_NAME


def _time(moment: datetime | None) -> str | None:
    return isoformat(moment) if moment is not None else None


async def topic_seq(session: AsyncSession, topic: str) -> int:
    """The latest seq on a topic: render at this seq, then fetch/subscribe for what follows."""
    return (await session.scalar(select(TopicSeq.seq).where(TopicSeq.topic == topic))) or 0


def user_view(user: User) -> dict[str, Any]:
    return {"id": user.id, "email": user.email, "name": user.name}


def step_view(step: SubmissionStep, viewer: Audience) -> dict[str, Any]:
    """One step as ``viewer`` reads it: the one formatter for the JSON view, the pages and (through
    the JSON view) the live scripts, so a label is the same live and after a reload (core.wording)."""
    known = STEPS_BY_NAME.get(step.step)
    result = step.result or {}
    if viewer is Audience.STAFF:
        note = wording.staff_note(step.step, step.state, result, step.error)
    else:
        note = wording.student_note(step.step, step.state, result, step.error)
    view = {
        "step": step.step,
        "label": known.label if known else step.step,
        "state": step.state,
        "state_text": wording.state_text(step.step, step.state),
        "tone": wording.tone(step.step, step.state),
        "note": note,
        # The time a page shows next to the step: when it ended, else when it started.
        "time": _time(step.finished_at or step.started_at),
        "time_prefix": "started " if step.finished_at is None and step.started_at is not None else "",
        "attempts": step.attempts,
        "queued_at": _time(step.queued_at),
        "started_at": _time(step.started_at),
        "finished_at": _time(step.finished_at),
        "result": result,
        "error": step.error,
    }
    return audience.step_view(view, viewer)


def ordered_steps(rows: Iterable[SubmissionStep]) -> list[SubmissionStep]:
    """Steps in pipeline order (unknown names last)."""
    order = {name: index for index, name in enumerate(STEP_NAMES)}
    return sorted(rows, key=lambda row: (order.get(row.step, len(order)), row.id))


def status_view(submission: Submission, steps: Iterable[SubmissionStep]) -> tuple[str, str]:
    """The overall status as (text, tone) a page shows: a complete but unscanned file is amber."""
    scan = next((row.state for row in steps if row.step == "scan"), None)
    return wording.overall(submission.status, scan)


async def submission_view(session: AsyncSession, submission: Submission, viewer: Audience) -> dict[str, Any]:
    """The submission as ``viewer`` sees it (core.audience decides, step results included)."""
    steps = ordered_steps(
        await session.scalars(select(SubmissionStep).where(SubmissionStep.submission_id == submission.id))
    )
    status_text, status_tone = status_view(submission, steps)
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
        "status_text": status_text,
        "status_tone": status_tone,
        "sha256": submission.sha256,
        "size": submission.size,
        "original_filename": submission.original_filename,
        "content_type": submission.content_type,
        "kind": submission.kind,
        "received_at": _time(submission.received_at),
        "completed_at": _time(submission.completed_at),
        "topic": topic,
        "seq": await topic_seq(session, topic),
        "steps": [step_view(step, viewer) for step in steps],
        "file_url": f"/api/submissions/{submission.id}/file",
        "thumbnail_url": f"/api/submissions/{submission.id}/thumbnail" if submission.thumbnail_key else None,
        "grade": None,
        "feedback": None,
    }
    # Students see a grade only once it is released; staff always.
    if viewer is Audience.STAFF or released:
        view["grade"], view["feedback"] = submission.grade, submission.feedback
    return audience.submission_view(view, viewer)
