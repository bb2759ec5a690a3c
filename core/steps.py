"""Ending pipeline steps: the transitions the workers and the api share.

A step reaches a terminal state here, whoever ends it: the worker that ran
it, the api receiving a provider's webhook, or the reconciler. The same
transaction queues what became ready and finishes the submission.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import utcnow
from core.events import EventBatch
from core.models import Submission, SubmissionStep
from core.pipeline import StepState, SubmissionStatus, blocked_steps, overall_status, ready_steps
from core.queues import enqueue_step


async def finish_step(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    submission_id: int,
    step: str,
    state: StepState,
    *,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    quarantine: bool = False,
    actor: str | None = None,
) -> bool:
    """Move a step to a terminal state, start what follows, finish the submission.

    Returns False when the step had already finished (nothing changed), so a
    webhook and a poll racing to complete the same step record it once.
    """
    topic = keys.submission_topic(submission_id)
    who = actor or f"worker:{step}"
    async with sessions() as session, session.begin():
        # Locking the submission orders the parallel steps' endings, so
        # exactly one of them sees all steps done and finishes it.
        submission = await session.scalar(
            select(Submission).where(Submission.id == submission_id).with_for_update()
        )
        rows = {
            row.step: row
            for row in await session.scalars(
                select(SubmissionStep).where(SubmissionStep.submission_id == submission_id)
            )
        }
        row = rows.get(step)
        if submission is None or row is None or StepState(row.state).terminal:
            return False
        now = utcnow()
        row.state = state.value
        row.finished_at = now
        row.wait_until = None
        row.result = result if result is not None else dict(row.result or {})
        row.error = error
        batch = EventBatch(session)
        data: dict[str, Any] = {"step": step, "state": state.value, "result": row.result}
        if error:
            data["error"] = error
        if row.started_at is not None:
            data["duration_ms"] = int((now - row.started_at).total_seconds() * 1000)
        await batch.emit(topic, f"step.{state.value}", data, actor=who)

        if quarantine:
            submission.status = SubmissionStatus.quarantined.value
        to_enqueue = await _advance(batch, topic, submission, rows, now)
        await _finish_submission_if_done(batch, submission, rows, now)
    await batch.publish(redis)
    for name in to_enqueue:
        await enqueue_step(redis, name, submission_id)
    return True


async def settle_submission(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, submission_id: int
) -> tuple[list[str], str | None]:
    """Queue steps that are ready and finish the submission if every step ended.

    For the reconciler: finish_step does both in the transaction that ends a
    step, so this only finds work when that was cut short. Returns the steps
    queued and the submission's new final status, if it got one.
    """
    topic = keys.submission_topic(submission_id)
    async with sessions() as session, session.begin():
        submission = await session.scalar(
            select(Submission).where(Submission.id == submission_id).with_for_update()
        )
        if submission is None or submission.completed_at is not None:
            return [], None
        rows = {
            row.step: row
            for row in await session.scalars(
                select(SubmissionStep).where(SubmissionStep.submission_id == submission_id)
            )
        }
        now = utcnow()
        batch = EventBatch(session)
        to_enqueue = await _advance(batch, topic, submission, rows, now)
        await _finish_submission_if_done(batch, submission, rows, now)
        finished = submission.status if submission.completed_at is not None else None
    await batch.publish(redis)
    for name in to_enqueue:
        await enqueue_step(redis, name, submission_id)
    return to_enqueue, finished


async def _advance(
    batch: EventBatch, topic: str, submission: Submission, rows: dict[str, SubmissionStep], now: datetime
) -> list[str]:
    """Queue the steps now ready; skip those that can never run."""
    quarantined = submission.status == SubmissionStatus.quarantined.value
    states = {name: StepState(row.state) for name, row in rows.items()}
    never = [name for name, state in states.items() if state == StepState.pending] if quarantined else []
    never += [name for name in blocked_steps(states) if name not in never]
    for name in never:
        rows[name].state = StepState.skipped.value
        rows[name].finished_at = now
        reason = "file quarantined" if quarantined else "an earlier step failed"
        rows[name].error = reason
        await batch.emit(topic, "step.skipped", {"step": name, "state": "skipped", "reason": reason})
    states = {name: StepState(row.state) for name, row in rows.items()}
    ready = ready_steps(states)
    for name in ready:
        rows[name].state = StepState.queued.value
        rows[name].queued_at = now
        await batch.emit(topic, "step.queued", {"step": name})
    return ready


async def _finish_submission_if_done(
    batch: EventBatch, submission: Submission, rows: dict[str, SubmissionStep], now: datetime
) -> None:
    states = {name: StepState(row.state) for name, row in rows.items()}
    quarantined = submission.status == SubmissionStatus.quarantined.value
    status = overall_status(states, quarantined=quarantined)
    if status == SubmissionStatus.processing or submission.completed_at is not None:
        return
    submission.status = status.value
    submission.completed_at = now
    summary = {"status": status.value, "steps": {name: state.value for name, state in states.items()}}
    await batch.emit(keys.submission_topic(submission.id), f"submission.{status.value}", summary)
    await batch.emit(
        keys.STAFF_DASHBOARD_TOPIC,
        "submission.finished",
        {"submission_id": submission.id, "assignment_id": submission.assignment_id, "status": status.value},
    )
