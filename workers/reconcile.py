"""The reconciler: make Redis agree with the database again.

The step rows are the truth and the arq queues only carry the work, so
whatever Redis lost (a FLUSHALL, a restart without persistence, a job arq gave
up on after a backstop timeout) can be rebuilt from the rows:

- a step ``queued`` or ``retrying`` whose job is not in Redis is enqueued again;
- a step ``running`` past its time limit with no live job (its worker died) is
  enqueued again; the runner counts that as a new attempt;
- a step waiting on a third party past its ``wait_until`` is enqueued again, so
  its handler can poll;
- a submission whose steps have all ended but whose status was never set is
  finished (and steps that became ready are queued).

A step whose job is alive — queued, deferred or in progress — is never touched,
and nothing that changed within the grace period is, so a transition that was
just committed and is about to enqueue its job is not raced. Every re-enqueue
is recorded as a ``reconciler.requeued`` event on the submission's topic.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import and_, exists, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import utcnow
from core.db import make_engine, make_sessionmaker
from core.models import Submission, SubmissionStep
from core.pipeline import StepState
from core.queues import connect, enqueue_step, job_exists
from core.settings import Settings, get_settings
from core.steps import settle_submission
from core.unit_of_work import unit_of_work

log = logging.getLogger(__name__)

ACTOR = "reconciler"
LIVE_STATES = (StepState.queued.value, StepState.retrying.value, StepState.running.value)


@dataclass(frozen=True)
class Requeued:
    submission_id: int
    step: str
    reason: str


@dataclass
class ReconcileReport:
    checked: int = 0
    requeued: list[Requeued] = field(default_factory=list)
    # Submissions this pass finished: id → final status.
    finished: dict[int, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "requeued": [{"submission_id": r.submission_id, "step": r.step, "reason": r.reason} for r in self.requeued],
            "finished": {str(k): v for k, v in self.finished.items()},
        }

    def summary(self) -> str:
        return f"checked {self.checked} steps, requeued {len(self.requeued)}, finished {len(self.finished)} submissions"


def _why_requeue(row: SubmissionStep, now: datetime, time_limit: float, grace: timedelta) -> str | None:
    """Why this step needs its job back, if its job is gone; None while it is not due."""
    state = StepState(row.state)
    if state == StepState.queued:
        since = row.queued_at or row.started_at
        return "queued, job missing" if since is None or since <= now - grace else None
    if state == StepState.retrying:
        since = row.started_at or row.queued_at
        return "retrying, job missing" if since is None or since <= now - grace else None
    if state == StepState.running and row.wait_until is not None:
        return "waiting past its deadline" if row.wait_until <= now - grace else None
    if state == StepState.running:
        overran = row.started_at is None or row.started_at <= now - timedelta(seconds=time_limit) - grace
        return "running past its time limit, job missing" if overran else None
    return None


async def _candidates(session: AsyncSession) -> list[SubmissionStep]:
    rows = await session.scalars(
        select(SubmissionStep).where(SubmissionStep.state.in_(LIVE_STATES)).order_by(SubmissionStep.id)
    )
    return list(rows)


async def _record_requeue(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, seen: SubmissionStep, reason: str
) -> bool:
    """Re-check the row under its lock (it may have moved on) and record why it is requeued.

    The state is left as it is: a "running" row stays running, so the runner
    counts an attempt whose worker vanished and gives up after max_tries.
    """
    async with unit_of_work(sessions, redis) as work:
        row = await work.session.scalar(select(SubmissionStep).where(SubmissionStep.id == seen.id).with_for_update())
        if row is None or row.state != seen.state or row.attempts != seen.attempts:
            return False
        if row.state == StepState.queued.value:
            row.queued_at = utcnow()
        await work.emit(
            keys.submission_topic(row.submission_id),
            "reconciler.requeued",
            {"step": row.step, "reason": reason, "state": row.state, "attempts": row.attempts},
            actor=ACTOR,
        )
    return True


async def _requeue_vanished(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, settings: Settings, now: datetime, grace: timedelta
) -> tuple[int, list[Requeued]]:
    async with sessions() as session:
        rows = await _candidates(session)
    requeued: list[Requeued] = []
    for row in rows:
        reason = _why_requeue(row, now, settings.retry_policy(row.step).timeout_seconds, grace)
        if reason is None or await job_exists(redis, row.step, row.submission_id):
            continue
        if not await _record_requeue(sessions, redis, row, reason):
            continue
        await enqueue_step(redis, row.step, row.submission_id)
        requeued.append(Requeued(row.submission_id, row.step, reason))
        log.info("requeued step", extra={"submission_id": row.submission_id, "step": row.step, "reason": reason})
    return len(rows), requeued


async def _settle_stalled(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, now: datetime, grace: timedelta
) -> dict[int, str]:
    """Submissions not finished although no step of theirs is queued, running or retrying."""
    busy = exists().where(and_(SubmissionStep.submission_id == Submission.id, SubmissionStep.state.in_(LIVE_STATES)))
    async with sessions() as session:
        ids = list(
            await session.scalars(
                select(Submission.id).where(
                    Submission.completed_at.is_(None),
                    or_(Submission.received_at.is_(None), Submission.received_at <= now - grace),
                    ~busy,
                )
            )
        )
    finished: dict[int, str] = {}
    for submission_id in ids:
        queued, status = await settle_submission(sessions, redis, submission_id)
        if status is not None:
            finished[submission_id] = status
        if queued:
            log.info("queued ready steps", extra={"submission_id": submission_id, "steps": queued})
    return finished


async def reconcile(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    settings: Settings,
    *,
    grace_seconds: float | None = None,
) -> ReconcileReport:
    """One pass over every unfinished step; safe to run from several places at once."""
    now = utcnow()
    grace = timedelta(seconds=settings.worker.reconcile_grace_seconds if grace_seconds is None else grace_seconds)
    checked, requeued = await _requeue_vanished(sessions, redis, settings, now, grace)
    finished = await _settle_stalled(sessions, redis, now, grace)
    report = ReconcileReport(checked=checked, requeued=requeued, finished=finished)
    log.info("reconciled", extra=report.as_dict())
    return report


async def reconcile_once(settings: Settings | None = None) -> ReconcileReport:
    """`handin reconcile`: one pass with connections of its own."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    redis = await connect(settings.redis_url)
    try:
        return await reconcile(make_sessionmaker(engine), redis, settings)
    finally:
        await redis.aclose()
        await engine.dispose()
