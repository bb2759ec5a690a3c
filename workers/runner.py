"""Runs one pipeline step for one submission, the same way for every task.

The database row of the step is the source of truth; the arq job only
carries the work. A step that already finished is a no-op, so a job
delivered twice (a killed worker, a reconciler re-enqueue) changes nothing.
Handlers raise ``TransientStepError`` for what may pass (clamd down, a 503),
``PermanentStepError`` for what never will (a 4xx); anything else is treated
as transient until the task's ``max_tries`` is used up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from arq import Retry
from arq.connections import ArqRedis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import utcnow
from core.events import EventBatch
from core.models import Submission, SubmissionStep
from core.pipeline import StepState, SubmissionStatus, blocked_steps, overall_status, ready_steps
from core.queues import enqueue_step
from core.settings import Settings

log = logging.getLogger(__name__)


class TransientStepError(Exception):
    """A failure that may pass: the step is retried after the task's delay."""


class PermanentStepError(Exception):
    """A failure no retry will fix: the step fails for good with this reason."""


@dataclass
class Outcome:
    state: Literal["succeeded", "skipped", "waiting"] = "succeeded"
    result: dict[str, Any] = field(default_factory=dict)
    # "waiting": how long the external party has before the reconciler steps in.
    wait_seconds: float | None = None
    # Set by the scanner: the file is infected and must go no further.
    quarantine: bool = False


@dataclass
class StepContext:
    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    redis: ArqRedis
    storage: Any
    submission: Submission
    step: str
    attempt: int
    previous_result: dict[str, Any]

    async def progress(self, message: str, fraction: float | None = None) -> None:
        """Tell the student's page how far the step has come."""
        data: dict[str, Any] = {"step": self.step, "message": message}
        if fraction is not None:
            data["fraction"] = round(max(0.0, min(1.0, fraction)), 3)
        async with self.sessions() as session, session.begin():
            batch = EventBatch(session)
            topic = keys.submission_topic(self.submission.id)
            await batch.emit(topic, "step.progress", data, actor=f"worker:{self.step}")
        await batch.publish(self.redis)


Handler = Callable[[StepContext], Awaitable[Outcome]]


async def run_step(ctx: dict[str, Any], step: str, submission_id: int, handler: Handler) -> str:
    """The body of every step job; returns what happened, for arq's log."""
    settings: Settings = ctx["settings"]
    sessions: async_sessionmaker[AsyncSession] = ctx["sessions"]
    redis: ArqRedis = ctx["redis"]
    policy = settings.retry_policy(step)

    started = await _start(sessions, redis, step, submission_id, policy.timeout_seconds, policy.max_tries)
    if isinstance(started, _Abandoned):
        # Every attempt so far ended with the worker gone (killed, OOM): a file that
        # takes the worker down must not be retried for ever.
        await finish_step(
            sessions, redis, submission_id, step, StepState.failed,
            error=f"the worker stopped during each of {started.attempts} attempts (gave up)",
        )
        return "failed"
    if isinstance(started, str):
        return started
    row, submission = started
    step_ctx = StepContext(
        settings, sessions, redis, ctx.get("storage"), submission, step, row.attempts, dict(row.result or {})
    )
    try:
        outcome = await asyncio.wait_for(handler(step_ctx), timeout=policy.timeout_seconds)
    except asyncio.CancelledError:
        # The worker is shutting down (or arq's backstop timeout fired). Say so in the
        # row, so the next delivery starts at once instead of waiting out the time limit.
        with contextlib.suppress(Exception):
            await asyncio.shield(_mark_retrying(sessions, redis, submission_id, step, "worker stopped mid-step", 0))
        raise
    except PermanentStepError as error:
        await finish_step(sessions, redis, submission_id, step, StepState.failed, error=str(error))
        return "failed"
    except (TransientStepError, TimeoutError, Exception) as error:
        reason = "timed out" if isinstance(error, TimeoutError) else str(error) or type(error).__name__
        if not isinstance(error, (TransientStepError, TimeoutError)):
            log.exception("step raised unexpectedly", extra={"step": step, "submission_id": submission_id})
        if row.attempts >= policy.max_tries:
            await finish_step(
                sessions, redis, submission_id, step, StepState.failed,
                error=f"{reason} (gave up after {row.attempts} attempts)",
            )
            return "failed"
        delay = policy.delay(row.attempts)
        await _mark_retrying(sessions, redis, submission_id, step, reason, delay)
        raise Retry(defer=timedelta(seconds=delay)) from error
    if outcome.state == "waiting":
        await _mark_waiting(sessions, redis, submission_id, step, outcome)
        return "waiting"
    state = StepState.skipped if outcome.state == "skipped" else StepState.succeeded
    await finish_step(sessions, redis, submission_id, step, state, result=outcome.result, quarantine=outcome.quarantine)
    return state.value


async def _lock_step(session: AsyncSession, submission_id: int, step: str) -> SubmissionStep | None:
    row: SubmissionStep | None = await session.scalar(
        select(SubmissionStep)
        .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == step)
        .with_for_update()
    )
    return row


@dataclass(frozen=True)
class _Abandoned:
    attempts: int


async def _start(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    step: str,
    submission_id: int,
    time_limit: float,
    max_tries: int,
) -> str | _Abandoned | tuple[SubmissionStep, Submission]:
    now = utcnow()
    async with sessions() as session, session.begin():
        row = await _lock_step(session, submission_id, step)
        if row is None:
            log.warning("job for a step that does not exist", extra={"step": step, "submission_id": submission_id})
            return "missing"
        state = StepState(row.state)
        if state.terminal:
            return "already " + state.value
        if state == StepState.running and row.wait_until is not None and row.wait_until > now:
            return "waiting"  # an external party will finish it
        if (
            state == StepState.running
            and row.wait_until is None
            and row.started_at is not None
            and row.started_at > now - timedelta(seconds=time_limit)
        ):
            # Another delivery of this job is still within its time: let it finish.
            remaining = (row.started_at + timedelta(seconds=time_limit) - now).total_seconds()
            raise Retry(defer=timedelta(seconds=max(1.0, remaining)))
        if state == StepState.running and row.wait_until is None and row.attempts >= max_tries:
            return _Abandoned(row.attempts)
        row.state = StepState.running.value
        row.attempts += 1
        row.started_at = now
        row.wait_until = None
        row.error = None
        submission = await session.get(Submission, submission_id)
        assert submission is not None  # the step row's foreign key guarantees it
        batch = EventBatch(session)
        await batch.emit(
            keys.submission_topic(submission_id),
            "step.running",
            {"step": step, "attempt": row.attempts},
            actor=f"worker:{step}",
        )
    await batch.publish(redis)
    return row, submission


async def _mark_retrying(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    submission_id: int,
    step: str,
    reason: str,
    delay: float,
) -> None:
    async with sessions() as session, session.begin():
        row = await _lock_step(session, submission_id, step)
        if row is None:
            return
        row.state = StepState.retrying.value
        row.error = reason
        batch = EventBatch(session)
        await batch.emit(
            keys.submission_topic(submission_id),
            "step.retrying",
            {"step": step, "attempt": row.attempts, "error": reason, "retry_in_seconds": round(delay, 1)},
            actor=f"worker:{step}",
        )
    await batch.publish(redis)


async def _mark_waiting(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, submission_id: int, step: str, outcome: Outcome
) -> None:
    async with sessions() as session, session.begin():
        row = await _lock_step(session, submission_id, step)
        # The third party may have answered (webhook) before we got here.
        if row is None or StepState(row.state).terminal:
            return
        row.result = outcome.result
        row.wait_until = utcnow() + timedelta(seconds=outcome.wait_seconds or 3600)
        batch = EventBatch(session)
        await batch.emit(
            keys.submission_topic(submission_id),
            "step.waiting",
            {"step": step, **outcome.result},
            actor=f"worker:{step}",
        )
    await batch.publish(redis)


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
    batch: EventBatch, topic: str, submission: Submission, rows: dict[str, SubmissionStep], now: Any
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
    batch: EventBatch, submission: Submission, rows: dict[str, SubmissionStep], now: Any
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
