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
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal

from arq import Retry
from arq.connections import ArqRedis
from sqlalchemy import String, Table, TextClause, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core import keys
from core.clock import isoformat, utcnow
from core.db import driver_rows, postgres_engine
from core.events import Envelope, emit_on_its_own, events_ctes, hold_back, publish
from core.models import Submission, SubmissionStep
from core.pipeline import STEP_NAMES, StepState
from core.queues import CARRIED_TO_FINISH
from core.settings import Settings
from core.steps import SubmissionFacts, UnwrittenStart, finish_step
from core.unit_of_work import unit_of_work

log = logging.getLogger(__name__)


# Work that ends within this is not announced by a progress event (StepContext.progress_if_slow).
SLOW_WORK_SECONDS = 0.25


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
    # Columns of the submission to set in the transaction that ends the step (the thumbnail's key).
    submission_values: dict[str, Any] = field(default_factory=dict)


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
    # The step's start, when not written yet (written before its progress).
    owed_start: StartOwed | None = None

    async def record_start(self) -> None:
        """Write the step's start now if it is still owed (StartOwed): before anything that lets
        someone else act on the step's row, as a provider's webhook or a poll does."""
        await _owed_written(self.owed_start)

    async def progress(self, message: str, fraction: float | None = None) -> None:
        """Tell the student's page how far the step has come."""
        await self.record_start()
        data: dict[str, Any] = {"step": self.step, "message": message}
        if fraction is not None:
            data["fraction"] = round(max(0.0, min(1.0, fraction)), 3)
        topic = keys.submission_topic(self.submission.id)
        await emit_on_its_own(self.sessions, self.redis, topic, "step.progress", data, actor=f"worker:{self.step}")

    @contextlib.asynccontextmanager
    async def progress_if_slow(self, message: str, after: float = SLOW_WORK_SECONDS) -> AsyncIterator[None]:
        """Say ``message`` (``progress``) once the work inside has taken ``after`` seconds: work that
        ends sooner is gone from the page before the message could be read, and would cost a
        statement and a publish for nothing. A message said is recorded before the block ends,
        so it comes before the step's end."""

        async def say() -> None:
            try:
                await self.progress(message)
            except Exception as error:  # the message is lost; the work it described is not
                log.warning("progress event not recorded", extra={"step": self.step, "error": str(error)})

        async with _once_slow(after, say):
            yield


@contextlib.asynccontextmanager
async def _once_slow(after: float, work: Callable[[], Coroutine[Any, Any, None]]) -> AsyncIterator[None]:
    """Start ``work`` once the block inside has taken ``after`` seconds; started, it has finished
    when the block ends (so what it records comes before anything the step does next)."""
    loop = asyncio.get_running_loop()
    started: list[asyncio.Task[None]] = []
    timer = loop.call_later(after, lambda: started.append(loop.create_task(work())))
    try:
        yield
    finally:
        timer.cancel()
        for task in started:
            await task


Handler = Callable[[StepContext], Awaitable[Outcome]]


def _announced_if_slow(redis: ArqRedis, owed: StartOwed | None) -> contextlib.AbstractAsyncContextManager[None]:
    """Publish what the job holds back (its start: core.events.HELD_BACK), or write the start it
    owes and publish it, once the work inside has taken SLOW_WORK_SECONDS. A step that ends sooner
    sends its start with its end, in the job's finishing transaction (workers.run): a round trip
    fewer, and the page still sees both, in order. Sent before the block ends, so before anything
    the step's end publishes."""
    if owed is None:
        return _once_slow(SLOW_WORK_SECONDS, lambda: publish(redis, []))

    async def write() -> None:
        try:
            await owed.write()
        except Exception as error:  # still owed: the step's end writes it
            log.warning("step start not recorded yet", extra={"step": owed.step, "error": str(error)})

    return _once_slow(SLOW_WORK_SECONDS, write)


async def run_step(ctx: dict[str, Any], step: str, submission_id: int, handler: Handler) -> str:
    """The body of every step job; returns what happened, for arq's log."""
    settings: Settings = ctx["settings"]
    sessions: async_sessionmaker[AsyncSession] = ctx["sessions"]
    redis: ArqRedis = ctx["redis"]
    policy = settings.retry_policy(step)
    # The worker's finishing MULTI/EXEC sends what the step's end publishes and queues (None: sent at once).
    carried = CARRIED_TO_FINISH.get()

    job_try = int(ctx.get("job_try") or 1)
    started = await _start(sessions, redis, step, submission_id, policy.timeout_seconds, policy.max_tries, job_try)

    async def fail(error: str, start: UnwrittenStart | None = None) -> str:
        await finish_step(
            sessions, redis, submission_id, step, StepState.failed, error=error, carried=carried, start=start
        )
        return "failed"

    if isinstance(started, _Abandoned):
        # Every attempt so far ended with the worker gone (killed, OOM): a file that
        # takes the worker down must not be retried for ever.
        return await fail(f"the worker stopped during each of {started.attempts} attempts (gave up)")
    if isinstance(started, str):
        return started
    row, submission, known, owed = started
    step_ctx = StepContext(
        settings, sessions, redis, ctx.get("storage"), submission, step, row.attempts, dict(row.result or {}), owed
    )
    try:
        # A timeout scope, not wait_for: no second task per job beside the one arq runs it in.
        async with asyncio.timeout(policy.timeout_seconds), _announced_if_slow(redis, owed):
            outcome = await handler(step_ctx)
    except asyncio.CancelledError:
        # The worker is shutting down (or arq's backstop timeout fired). Say so in the
        # row, so the next delivery starts at once instead of waiting out the time limit.
        with contextlib.suppress(Exception):
            await asyncio.shield(_handed_back(sessions, redis, submission_id, step, owed))
        raise
    except PermanentStepError as error:
        return await fail(str(error), _for_the_end(owed))
    except (TransientStepError, TimeoutError, Exception) as error:
        reason = "timed out" if isinstance(error, TimeoutError) else str(error) or type(error).__name__
        if not isinstance(error, (TransientStepError, TimeoutError)):
            log.exception("step raised unexpectedly", extra={"step": step, "submission_id": submission_id})
        if row.attempts >= policy.max_tries:
            return await fail(f"{reason} (gave up after {row.attempts} attempts)", _for_the_end(owed))
        delay = policy.delay(row.attempts)
        await _owed_written(owed)
        await _mark_retrying(sessions, redis, submission_id, step, reason, delay)
        raise Retry(defer=timedelta(seconds=delay)) from error
    if outcome.state == "waiting":
        await _owed_written(owed)
        await _mark_waiting(sessions, redis, submission_id, step, outcome)
        return "waiting"
    state = StepState.skipped if outcome.state == "skipped" else StepState.succeeded
    await finish_step(
        sessions,
        redis,
        submission_id,
        step,
        state,
        result=outcome.result,
        quarantine=outcome.quarantine,
        submission_values=outcome.submission_values,
        carried=carried,
        known=known,
        start=_for_the_end(owed),
    )
    return state.value


async def _handed_back(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, submission_id: int, step: str, owed: StartOwed | None
) -> None:
    await _owed_written(owed)
    await _mark_retrying(sessions, redis, submission_id, step, "worker stopped mid-step", 0)


async def _lock_step(session: AsyncSession, submission_id: int, step: str) -> SubmissionStep | None:
    row: SubmissionStep | None = await session.scalar(
        select(SubmissionStep)
        .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == step)
        .with_for_update()
    )
    return row


# A step whose job may simply start: nobody is running it, it has not ended.
_STARTABLE = [state.value for state in StepState if not state.terminal and state != StepState.running]
_steps: Table = SubmissionStep.__table__  # type: ignore[assignment]
_submissions: Table = Submission.__table__  # type: ignore[assignment]
# Built once, with bound parameters only: compiled once per process, prepared once per connection.
_START_WAITING = (
    update(_steps)
    .where(
        _steps.c.submission_id == bindparam("sid"),
        _steps.c.step == bindparam("name"),
        _steps.c.state.in_(_STARTABLE),
    )
    .values(
        state=StepState.running.value,
        attempts=_steps.c.attempts + 1,
        started_at=bindparam("now"),
        wait_until=None,
        error=None,
    )
    .returning(_steps.c.attempts, _steps.c.result, _steps.c.submission_id)
)
_READ_SUBMISSION = select(_submissions).where(_submissions.c.id == bindparam("sid"))
# PostgreSQL, the usual start in one statement run on its own (autocommit): mark the step running,
# write its step.running event with the topic's next seq (core.events' writer, the one event read
# from the step row marked), and read the submission, its course and its steps' states (what the
# step's end is decided from: core.steps.finish_step's ``known``; the step itself as it was
# before this statement, which marks it running). One round trip instead of BEGIN, two
# statements and COMMIT. Nothing is written when the step is not waiting to run. The step row is
# locked before the topic's seq row, the order every transaction ending or starting a step takes.
# The attempt is arq's delivery count where that is more (``job_try``): a first delivery whose start
# was owed (StartOwed) and never written, because the worker died first, still counts.
# Unwritten (``written=False``): the same answer, read only, for a start its end writes (StartOwed).
_RUNNING_EVENT = """SELECT CAST(:topic AS text) AS topic, 'step.running' AS type, CAST(:now AS timestamptz) AS at,
            CAST(json_build_object('step', CAST(:name AS text), 'attempt', attempts) AS text) AS data,
            CAST(:actor AS text) AS actor, CAST(NULL AS bigint) AS actor_id, 1 AS ord
        FROM started"""


def _start_pg(written: bool) -> TextClause:
    if written:
        started = f"""UPDATE submission_steps
        SET state = :running, attempts = GREATEST(attempts + 1, :job_try), started_at = :now, wait_until = NULL,
            error = NULL
        WHERE submission_id = :sid AND step = :name AND state = ANY(:startable)
        RETURNING attempts, result, submission_id
    ), {events_ctes(staged_from=_RUNNING_EVENT)}"""
        seq, bumped = "bumped.seq", "CROSS JOIN bumped"
    else:
        started = """SELECT attempts + 1 AS attempts, result, submission_id FROM submission_steps
        WHERE submission_id = :sid AND step = :name AND state = ANY(:startable)
    )"""
        seq, bumped = "CAST(NULL AS bigint)", ""
    statement = text(
        f"""
    WITH started AS (
        {started}
    SELECT started.attempts AS step_attempts, started.result AS step_result, {seq} AS event_seq,
           assignments.course_id AS course_id, steps.names AS step_names, steps.states AS step_states,
           {", ".join(f"submissions.{column.name}" for column in _submissions.c)}
    FROM started JOIN submissions ON submissions.id = started.submission_id
    JOIN assignments ON assignments.id = submissions.assignment_id
    CROSS JOIN LATERAL (
        SELECT array_agg(step ORDER BY step) AS names, array_agg(state ORDER BY step) AS states
        FROM submission_steps WHERE submission_id = started.submission_id
    ) AS steps
    {bumped}
    """
    )
    if written:
        statement = statement.bindparams(bindparam("now", type_=_steps.c.started_at.type))
    return statement.bindparams(bindparam("startable", type_=ARRAY(String)))


_START_RUNNING_PG = _start_pg(written=True)
_READ_STARTABLE_PG = _start_pg(written=False)


@dataclass
class _Started:
    """What a start read (and wrote): the step, its submission, its step.running event (None when
    not written yet) and the facts the step's end is decided from."""

    row: SubmissionStep
    submission: Submission
    running: Envelope | None
    facts: SubmissionFacts


async def _start_in_one_statement(
    engine: AsyncEngine, step: str, submission_id: int, now: datetime, job_try: int, written: bool = True
) -> _Started | None:
    """PostgreSQL's usual start (see _START_RUNNING_PG), or the same read without writing it
    (``written`` False); None when the step is in any other state."""
    topic = keys.submission_topic(submission_id)
    parameters: dict[str, Any] = {"sid": submission_id, "name": step, "startable": _STARTABLE}
    if written:
        running = {"now": now, "running": StepState.running.value, "job_try": job_try}
        parameters |= running | {"topic": topic, "actor": f"worker:{step}"}
    rows = await driver_rows(engine, _START_RUNNING_PG if written else _READ_STARTABLE_PG, parameters)
    if not rows:
        return None
    both = rows[0]
    columns = {column.key: both[column.name] for column in _submissions.c}
    attempts = both["step_attempts"]
    row = SubmissionStep(submission_id=submission_id, step=step, attempts=attempts, result=both["step_result"])
    data = {"step": step, "attempt": attempts}
    envelope = (
        Envelope(seq=both["event_seq"], topic=topic, type="step.running", at=isoformat(now), data=data)
        if written
        else None
    )
    states = dict(zip(both["step_names"], both["step_states"], strict=True))
    facts = SubmissionFacts(
        submission_id,
        both["status"],
        both["completed_at"],
        both["assignment_id"],
        both["course_id"],
        # In the pipeline's order (the order a step's skipped followers are announced in).
        states={name: StepState(states[name]) for name in STEP_NAMES if name in states} | {step: StepState.running},
        started_at={step: now},
        results={step: dict(both["step_result"] or {})},
    )
    return _Started(row, Submission(**columns), envelope, facts)


async def _start_waiting_step(
    session: AsyncSession, step: str, submission_id: int, now: datetime
) -> tuple[SubmissionStep, Submission] | None:
    """SQLite's usual start: mark the step running if it is waiting to run, and read its
    submission. None when the step is in any other state (running elsewhere, ended, missing):
    the caller then takes the row lock and decides."""
    parameters = {"sid": submission_id, "name": step, "now": now}
    started = (await session.execute(_START_WAITING, parameters)).one_or_none()
    if started is None:
        return None
    columns = dict((await session.execute(_READ_SUBMISSION, parameters)).one()._mapping)
    # Plain objects for the handler, never attached to a session: no ORM identity map or flush.
    row = SubmissionStep(submission_id=submission_id, step=step, attempts=started.attempts, result=started.result)
    return row, Submission(**columns)


class StartOwed:
    """A step's start not written yet (PostgreSQL, a job's first delivery): a quick step's end
    writes it (core.steps.UnwrittenStart), a statement fewer per step. Written sooner where
    something needs it first: once the step has run SLOW_WORK_SECONDS (the page shows it
    running), before the step's progress is recorded, and before any end other than the one
    writing it (a retry, a wait, a handback). A job's later deliveries write their start at once,
    counting arq's deliveries: a first attempt the worker died in before its start was written
    still counts."""

    def __init__(self, engine: AsyncEngine, redis: ArqRedis, step: str, submission_id: int, start: UnwrittenStart):
        self.engine, self.redis, self.step, self.submission_id = engine, redis, step, submission_id
        self.start = start
        self.settled = False  # written, or handed to the end that writes it
        self.turn = asyncio.Lock()

    async def write(self) -> None:
        """Written now, its event published (once; what follows waits until it is)."""
        async with self.turn:
            if self.settled:
                return
            started = await _start_in_one_statement(self.engine, self.step, self.submission_id, self.start.at, 1)
            self.settled = True
            if started is None:  # ended or started by someone else meanwhile: its end will find out
                where = {"step": self.step, "submission_id": self.submission_id}
                log.warning("step no longer waiting to start", extra=where)
                return
            assert started.running is not None
            await publish(self.redis, [started.running])

    def for_the_end(self) -> UnwrittenStart | None:
        """The start for the step's end to write; None once written."""
        if self.settled:
            return None
        self.settled = True
        return self.start


async def _owed_written(owed: StartOwed | None) -> None:
    if owed is not None:
        await owed.write()


def _for_the_end(owed: StartOwed | None) -> UnwrittenStart | None:
    return owed.for_the_end() if owed is not None else None


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
    job_try: int,
) -> str | _Abandoned | tuple[SubmissionStep, Submission, SubmissionFacts | None, StartOwed | None]:
    """The step marked running (or its start owed: StartOwed) and its submission, and what its
    end may be decided from (PostgreSQL's usual start, else None); or why it does not run now."""
    now = utcnow()
    engine = postgres_engine(sessions)
    if engine is not None:
        fast_pg = await _start_in_one_statement(engine, step, submission_id, now, job_try, written=job_try > 1)
        if fast_pg is not None:
            if fast_pg.running is None:
                owed = StartOwed(engine, redis, step, submission_id, UnwrittenStart(now, fast_pg.row.attempts))
                return fast_pg.row, fast_pg.submission, fast_pg.facts, owed
            # In a worker's job the start is held back (_announced_if_slow: sent with a quick end).
            if not hold_back([fast_pg.running]):
                await publish(redis, [fast_pg.running])
            return fast_pg.row, fast_pg.submission, fast_pg.facts, None
    else:
        async with unit_of_work(sessions, None) as work:
            fast = await _start_waiting_step(work.session, step, submission_id, now)
            if fast is not None:
                work.stage(
                    keys.submission_topic(submission_id),
                    "step.running",
                    {"step": step, "attempt": fast[0].attempts},
                    actor=f"worker:{step}",
                )
        if fast is not None:
            if not hold_back(work.envelopes):
                await work.publish(redis)
            return fast[0], fast[1], None, None
    async with unit_of_work(sessions, redis) as work:
        session = work.session
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
        await work.emit(
            keys.submission_topic(submission_id),
            "step.running",
            {"step": step, "attempt": row.attempts},
            actor=f"worker:{step}",
        )
    return row, submission, None, None


async def _mark_retrying(
    sessions: async_sessionmaker[AsyncSession],
    redis: ArqRedis,
    submission_id: int,
    step: str,
    reason: str,
    delay: float,
) -> None:
    async with unit_of_work(sessions, redis) as work:
        row = await _lock_step(work.session, submission_id, step)
        if row is None:
            return
        row.state = StepState.retrying.value
        row.error = reason
        await work.emit(
            keys.submission_topic(submission_id),
            "step.retrying",
            {"step": step, "attempt": row.attempts, "error": reason, "retry_in_seconds": round(delay, 1)},
            actor=f"worker:{step}",
        )


async def _mark_waiting(
    sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, submission_id: int, step: str, outcome: Outcome
) -> None:
    async with unit_of_work(sessions, redis) as work:
        row = await _lock_step(work.session, submission_id, step)
        # The third party may have answered (webhook) before we got here.
        if row is None or StepState(row.state).terminal:
            return
        row.result = outcome.result
        row.wait_until = utcnow() + timedelta(seconds=outcome.wait_seconds or 3600)
        await work.emit(
            keys.submission_topic(submission_id),
            "step.waiting",
            {"step": step, **outcome.result},
            actor=f"worker:{step}",
        )
