"""Ending pipeline steps: the transitions the workers and the api share.

A step reaches a terminal state here, whoever ends it: the worker that ran
it, the api receiving a provider's webhook, or the reconciler. The same
transaction queues what became ready and finishes the submission.

This is every step's hot path, so it is written in Core statements built
once (their compiled form is cached; asyncpg prepares each once per
connection): the submission is locked and its step rows read, UPDATEs
write only what changed, and the transaction's events go in one statement
(``StagedEvents.stage``). On PostgreSQL the statements run on the pooled
connection's asyncpg object itself (``core.db.driver_connection``), and a
step's usual end is optimistic: read unlocked, then written by one statement
only if nothing changed meanwhile (``_end_if_unchanged``), the locked
transaction when something did.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from typing import Any

from arq.connections import ArqRedis
from sqlalchemy import Boolean, String, Table, TextClause, bindparam, select, text, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core import keys
from core.clock import utcnow
from core.db import driver_connection, driver_rows, driver_statement, postgres_engine
from core.events import (
    EVENT_ARRAYS,
    Envelope,
    EventBatch,
    PendingEvent,
    StagedEvents,
    envelopes_of,
    event_arrays,
    events_ctes,
)
from core.models import Assignment, Submission, SubmissionStep
from core.pipeline import TERMINAL_STATES, StepState, SubmissionStatus, blocked_steps, overall_status, ready_steps
from core.queues import Delivery, publish_and_enqueue
from core.unit_of_work import unit_of_work

_steps: Table = SubmissionStep.__table__  # type: ignore[assignment]
_submissions: Table = Submission.__table__  # type: ignore[assignment]
_assignments: Table = Assignment.__table__  # type: ignore[assignment]

# Locking the submission orders the parallel steps' endings, so exactly one of
# them sees all steps done and finishes it. The step rows are read by a second
# statement, after the lock is held: in READ COMMITTED a statement that waited for
# the lock re-reads only the locked row, so a join would see the other steps as
# they were before the ending it waited for.
_LOCK_SUBMISSION = (
    select(_submissions.c.status, _submissions.c.completed_at, _submissions.c.assignment_id, _assignments.c.course_id)
    .join_from(_submissions, _assignments)
    .where(_submissions.c.id == bindparam("submission_id"))
    .with_for_update(of=_submissions)
)
_READ_STEPS = select(_steps.c.step, _steps.c.state, _steps.c.started_at, _steps.c.result).where(
    _steps.c.submission_id == bindparam("submission_id")
)
# PostgreSQL: both in one statement that locks the step rows too (unlocked, _READ_PG is the
# optimistic end's read, a statement of its own). A row locked in READ COMMITTED
# is returned as its latest committed version (the lock waits for a writer, then re-reads the
# row), so the steps are seen as they are once the submission's lock is held. The submission is
# locked first (its row comes first in each joined row), so parallel endings still queue on it.
_READ_PG = (
    select(
        _submissions.c.status,
        _submissions.c.completed_at,
        _submissions.c.assignment_id,
        _assignments.c.course_id,
        _steps.c.step,
        _steps.c.state,
        _steps.c.started_at,
        _steps.c.result,
    )
    .join_from(_submissions, _assignments)
    .join(_steps, _steps.c.submission_id == _submissions.c.id)
    .where(_submissions.c.id == bindparam("submission_id"))
)
_LOCK_AND_READ_PG = _READ_PG.with_for_update(of=[_submissions, _steps])
_END_STEP = (
    update(_steps)
    .where(_steps.c.submission_id == bindparam("sid"), _steps.c.step == bindparam("name"))
    .values(
        state=bindparam("state"),
        finished_at=bindparam("now"),
        wait_until=None,
        result=bindparam("result", type_=_steps.c.result.type),
        error=bindparam("error", type_=_steps.c.error.type),
    )
)
_SKIP_STEPS = (
    update(_steps)
    .where(_steps.c.submission_id == bindparam("sid"), _steps.c.step.in_(bindparam("names", expanding=True)))
    .values(state=StepState.skipped.value, finished_at=bindparam("now"), error=bindparam("reason"))
)
_QUEUE_STEPS = (
    update(_steps)
    .where(_steps.c.submission_id == bindparam("sid"), _steps.c.step.in_(bindparam("names", expanding=True)))
    .values(state=StepState.queued.value, queued_at=bindparam("now"))
)
_SET_SUBMISSION = (
    update(_submissions)
    .where(_submissions.c.id == bindparam("sid"))
    .values(status=bindparam("status"), completed_at=bindparam("completed_at", type_=_submissions.c.completed_at.type))
)


# PostgreSQL: every write of a step's end in one statement, its events included. Each UPDATE is
# a no-op when it has nothing to do (no step name, empty arrays, set_submission false); they touch
# disjoint rows (the step ended, the pending steps skipped or queued, the submission already
# locked). `steps_written` makes the seq bump wait for the step rows' updates, so step rows are
# locked before the topics' seq rows, as everywhere else (core.events.events_ctes). A step whose
# start was not written (a quick step's: ``UnwrittenStart``) has it written by its end: a non-null
# `:start_at` counts the attempt and sets the start time, and its step.running event is the first
# of the statement's events.
#
# Guarded (the optimistic end, after an unlocked read): the statement first locks the submission
# and its steps, as the locked path's read does (a row locked in READ COMMITTED is its latest
# committed version), and writes only if what the end decides is still what it would decide:
# status and completed_at unchanged, and each step's state as far as an end depends on it
# (_plan_class: queued, running and retrying are alike "active", so another step starting
# meanwhile is no conflict). Where no step is pending and others are still to end (the four
# parallel steps after store), an end queues and skips nothing and finishes nothing whatever the
# others do, so long as one of them is still to end: then only its own step, no pending step and
# "another step still to end" are checked, and the others ending meanwhile is no conflict either.
# Each write waits for the guard (an UPDATE's condition, the events' gate), so the rows are
# locked in the usual order before anything is written. `applied` says whether it wrote; when it
# did not, the latest facts come back to decide again.
_ACTIVE_STATES = (StepState.queued, StepState.running, StepState.retrying)


def _sql_list(states: Iterable[StepState]) -> str:
    return ", ".join(f"'{state.value}'" for state in sorted(states))


_SAME_CLASS = "class = (:read_classes)[array_position(:read_steps, step)]"
_GUARD_PG = f"""
    locked AS (
        SELECT submissions.status, submissions.completed_at, submission_steps.step, submission_steps.state,
               CASE WHEN submission_steps.state IN ({_sql_list(_ACTIVE_STATES)})
                    THEN 'active' ELSE submission_steps.state END AS class
        FROM submissions JOIN submission_steps ON submission_steps.submission_id = submissions.id
        WHERE submissions.id = :sid
        FOR UPDATE OF submissions, submission_steps
    ), guard AS (
        SELECT count(*) = cardinality(:read_steps)
               AND coalesce(bool_and(
                   status = :read_status AND completed_at IS NOT DISTINCT FROM :read_completed_at
               ), false)
               AND CASE WHEN :read_any_pending OR :read_others_ended
                        THEN coalesce(bool_and({_SAME_CLASS}), false)
                        ELSE coalesce(bool_and({_SAME_CLASS}) FILTER (WHERE step = :name), false)
                             AND NOT coalesce(bool_or(state = '{StepState.pending.value}'), false)
                             AND NOT coalesce(
                                 bool_and(state IN ({_sql_list(TERMINAL_STATES)})) FILTER (WHERE step <> :name), true
                             )
                   END AS ok,
               min(status) AS status_now, min(completed_at) AS completed_at_now,
               array_agg(step ORDER BY step) AS steps_now, array_agg(state ORDER BY step) AS states_now
        FROM locked
    ),"""


def _plan_class(state: StepState) -> str:
    """What an end decides from a step's state (``_GUARD_PG`` says the same in SQL)."""
    return "active" if state in _ACTIVE_STATES else state.value


def _write_ending_pg(guarded: bool, columns: tuple[str, ...] = ()) -> TextClause:
    """The end's write; ``columns``: the submission's columns the step also sets (one UPDATE of the
    row with its status: a statement updates a row once), each from ``:value_<column>``."""
    guard = _GUARD_PG if guarded else ""
    check = " AND (SELECT ok FROM guard)" if guarded else ""
    answer = (
        "SELECT guard.ok AS applied, guard.status_now, guard.completed_at_now, guard.steps_now, guard.states_now,"
        " bumped.topic, bumped.seq FROM guard LEFT JOIN bumped ON true"
        if guarded
        else "SELECT topic, seq FROM bumped"
    )
    statement = text(
        f"""
        WITH {guard} ended AS (
            UPDATE submission_steps
            SET state = :state, finished_at = :now, wait_until = NULL, result = :result, error = :error,
                attempts = attempts + CAST(CAST(:start_at AS timestamptz) IS NOT NULL AS integer),
                started_at = coalesce(CAST(:start_at AS timestamptz), started_at)
            WHERE submission_id = :sid AND step = :name{check}
            RETURNING 1
        ), skipped AS (
            UPDATE submission_steps SET state = :skipped_state, finished_at = :now, error = :reason
            WHERE submission_id = :sid AND step = ANY(:skip){check}
            RETURNING 1
        ), queued AS (
            UPDATE submission_steps SET state = :queued_state, queued_at = :now
            WHERE submission_id = :sid AND step = ANY(:queue){check}
            RETURNING 1
        ), finished AS ({_finish_submission_sql(columns, check)}
        ), steps_written AS (
            SELECT (SELECT count(*) FROM ended) + (SELECT count(*) FROM skipped)
                 + (SELECT count(*) FROM queued) + (SELECT count(*) FROM finished) AS n
            {"WHERE (SELECT ok FROM guard)" if guarded else ""}
        ), {events_ctes(after="steps_written")}
        {answer}
        """
    ).bindparams(
        bindparam("now", type_=_steps.c.finished_at.type),
        bindparam("start_at", type_=_steps.c.started_at.type),
        bindparam("result", type_=_steps.c.result.type),
        bindparam("error", type_=_steps.c.error.type),
        bindparam("reason", type_=_steps.c.error.type),
        bindparam("skip", type_=ARRAY(String)),
        bindparam("queue", type_=ARRAY(String)),
        bindparam("completed_at", type_=_submissions.c.completed_at.type),
        bindparam("set_submission", type_=Boolean),
        *EVENT_ARRAYS,
    )
    statement = statement.bindparams(
        *(bindparam(f"value_{column}", type_=_submissions.c[column].type) for column in columns)
    )
    if guarded:
        statement = statement.bindparams(
            bindparam("read_completed_at", type_=_submissions.c.completed_at.type),
            bindparam("read_steps", type_=ARRAY(String)),
            bindparam("read_classes", type_=ARRAY(String)),
            bindparam("read_any_pending", type_=Boolean),
            bindparam("read_others_ended", type_=Boolean),
        )
    return statement


def _finish_submission_sql(columns: tuple[str, ...], check: str) -> str:
    if not columns:
        return f"""
            UPDATE submissions SET status = :status, completed_at = :completed_at
            WHERE id = :sid AND :set_submission{check}
            RETURNING 1"""
    values = "".join(f", {column} = :value_{column}" for column in columns)
    return f"""
            UPDATE submissions
            SET status = CASE WHEN :set_submission THEN :status ELSE status END,
                completed_at = CASE WHEN :set_submission THEN :completed_at ELSE completed_at END{values}
            WHERE id = :sid{check}
            RETURNING 1"""


@cache
def _write_ending_if_unchanged(columns: tuple[str, ...]) -> TextClause:
    """The guarded write that also sets these submission columns, built once per set of columns."""
    return _write_ending_pg(guarded=True, columns=columns)


_WRITE_ENDING_PG = _write_ending_pg(guarded=False)
_WRITE_ENDING_IF_UNCHANGED_PG = _write_ending_if_unchanged(())


@dataclass(frozen=True)
class UnwrittenStart:
    """A step's start its end writes (a quick step's, ``workers.runner``): when it started, which
    attempt it is; its row still says it waits to run, and its step.running event is not written."""

    at: datetime
    attempt: int


@dataclass
class _Ending:
    """What a transition writes: the step ended (if any), steps skipped and queued, the submission."""

    step: str | None = None
    state: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    skip: list[str] = field(default_factory=list)
    skip_reason: str | None = None
    queue: list[str] = field(default_factory=list)
    start: UnwrittenStart | None = None  # the ended step's start, written with its end


@dataclass
class SubmissionFacts:
    """What a transition needs of a submission and its steps, read under its lock (or, for the
    optimistic end, read unlocked: by the end itself or by its step's start, see ``finish_step``)."""

    id: int
    status: str
    completed_at: datetime | None
    assignment_id: int
    course_id: int
    states: dict[str, StepState] = field(default_factory=dict)
    started_at: dict[str, datetime | None] = field(default_factory=dict)
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    changed: bool = False  # status or completed_at to be written


def _facts_of(submission_id: int, locked: Mapping[Any, Any], steps: Sequence[Mapping[Any, Any]]) -> SubmissionFacts:
    """From the submission's row and its steps' (SQLAlchemy row mappings or asyncpg records)."""
    facts = SubmissionFacts(
        submission_id, locked["status"], locked["completed_at"], locked["assignment_id"], locked["course_id"]
    )
    for row in steps:
        facts.states[row["step"]] = StepState(row["state"])
        facts.started_at[row["step"]] = row["started_at"]
        facts.results[row["step"]] = dict(row["result"] or {})
    return facts


class _Locked:
    """A submission locked for a transition: what it is, the events staged, and the writes."""

    def __init__(self, facts: SubmissionFacts | None, events: StagedEvents) -> None:
        self.facts = facts
        self.events = events

    async def set_submission(self, values: Mapping[str, Any]) -> None:
        raise NotImplementedError

    async def write(self, facts: SubmissionFacts, ending: _Ending, now: datetime) -> None:
        raise NotImplementedError


class _DriverLocked(_Locked):
    """PostgreSQL, on the pool's asyncpg connection (core.db.driver_connection): the lock and read
    in one statement, the writes and events in one more, inside BEGIN and COMMIT."""

    def __init__(self, engine: AsyncEngine, connection: Any, facts: SubmissionFacts | None) -> None:
        super().__init__(facts, StagedEvents())
        self.engine = engine
        self.connection = connection

    @classmethod
    async def read(cls, engine: AsyncEngine, connection: Any, submission_id: int) -> _DriverLocked:
        steps = await driver_statement(_LOCK_AND_READ_PG, engine).fetch(connection, {"submission_id": submission_id})
        return cls(engine, connection, _facts_of(submission_id, steps[0], steps) if steps else None)

    async def set_submission(self, values: Mapping[str, Any]) -> None:
        assert self.facts is not None
        statement = _submission_update(tuple(sorted(values)))
        await driver_statement(statement, self.engine).fetch(self.connection, {"sid": self.facts.id, **values})

    async def write(self, facts: SubmissionFacts, ending: _Ending, now: datetime) -> None:
        staged, self.events.staged = self.events.staged, []
        parameters = _ending_parameters(facts, ending, now, staged)
        rows = await driver_statement(_WRITE_ENDING_PG, self.engine).fetch(self.connection, parameters)
        self.events.envelopes.extend(envelopes_of(staged, {row["topic"]: int(row["seq"]) for row in rows}))


# A step's end as decided from the facts: what to write, and when it ended.
_Plan = tuple[_Ending, datetime]


def _ending_parameters(
    facts: SubmissionFacts, ending: _Ending, now: datetime, staged: list[PendingEvent]
) -> dict[str, Any]:
    return {
        "start_at": ending.start.at if ending.start is not None else None,
        "sid": facts.id,
        "name": ending.step,
        "state": ending.state,
        "result": ending.result,
        "error": ending.error,
        "skipped_state": StepState.skipped.value,
        "skip": ending.skip,
        "reason": ending.skip_reason,
        "queued_state": StepState.queued.value,
        "queue": ending.queue,
        "status": facts.status,
        "completed_at": facts.completed_at,
        "set_submission": facts.changed,
        "now": now,
        **event_arrays(staged),
    }


# Decided again from the facts a guarded write found, before the locked path takes over.
END_ATTEMPTS = 3


async def _end_if_unchanged(
    engine: AsyncEngine,
    submission_id: int,
    plan: Callable[[SubmissionFacts, StagedEvents], _Plan | None],
    known: SubmissionFacts | None,
    values: Mapping[str, Any],
) -> tuple[list[Envelope], list[str]] | None:
    """PostgreSQL's usual end without BEGIN, a locking read and COMMIT: the facts read unlocked
    (or ``known``, as the step's start read them: then the write is the only statement), and
    written by a statement of its own that locks them and writes only if nothing the end depends
    on has changed (``_WRITE_ENDING_IF_UNCHANGED_PG``). ``values``: the submission's columns the
    step also sets, written by the same statement. When another step of the submission ended in
    between, the write answers the latest facts and the end is decided again from them: one more
    statement.

    The events published and the steps queued; None when the locked path must decide: the
    facts kept changing, or ``plan`` found nothing to do (which only the locked read may conclude).
    """
    if known is not None:
        read = replace(known)  # its fields are reassigned below, never changed in place
    else:
        rows = await driver_rows(engine, _READ_PG, {"submission_id": submission_id})
        if not rows:
            return None
        read = _facts_of(submission_id, rows[0], rows)
    for _ in range(END_ATTEMPTS):
        facts = replace(read, states=dict(read.states))
        events = StagedEvents()
        planned = plan(facts, events)
        if planned is None:
            return None
        ending, now = planned
        parameters = {
            **_ending_parameters(facts, ending, now, events.staged),
            "read_status": read.status,
            "read_completed_at": read.completed_at,
            "read_steps": list(read.states),
            "read_classes": [_plan_class(state) for state in read.states.values()],
            "read_any_pending": StepState.pending in read.states.values(),
            "read_others_ended": all(state.terminal for name, state in read.states.items() if name != ending.step),
            **{f"value_{column}": value for column, value in values.items()},
        }
        written = await driver_rows(engine, _write_ending_if_unchanged(tuple(sorted(values))), parameters)
        answer = written[0]
        if answer["applied"]:
            return envelopes_of(events.staged, {row["topic"]: int(row["seq"]) for row in written}), ending.queue
        latest = dict(zip(answer["steps_now"] or (), answer["states_now"] or (), strict=True))
        if latest.keys() != read.states.keys():  # the submission is gone
            return None
        read.status, read.completed_at = answer["status_now"], answer["completed_at_now"]
        read.states = {step: StepState(latest[step]) for step in read.states}  # in the pipeline's order
    return None


class _SessionLocked(_Locked):
    """Any database through a session (SQLite's path): the submission locked, then its steps read;
    the writes a statement each, the events written as the unit of work commits."""

    def __init__(self, work: EventBatch, facts: SubmissionFacts | None) -> None:
        super().__init__(facts, work)
        self.session = work.session

    @classmethod
    async def read(cls, work: EventBatch, submission_id: int) -> _SessionLocked:
        parameters = {"submission_id": submission_id}
        locked = (await work.session.execute(_LOCK_SUBMISSION, parameters)).one_or_none()
        if locked is None:
            return cls(work, None)
        steps = [row._mapping for row in await work.session.execute(_READ_STEPS, parameters)]
        return cls(work, _facts_of(submission_id, locked._mapping, steps))

    async def set_submission(self, values: Mapping[str, Any]) -> None:
        assert self.facts is not None
        await self.session.execute(_submission_update(tuple(sorted(values))), {"sid": self.facts.id, **values})

    async def write(self, facts: SubmissionFacts, ending: _Ending, now: datetime) -> None:
        session = self.session
        if ending.step is not None:
            await session.execute(
                _END_STEP,
                {
                    "sid": facts.id,
                    "name": ending.step,
                    "state": ending.state,
                    "now": now,
                    "result": ending.result,
                    "error": ending.error,
                },
            )
        if ending.skip:
            await session.execute(
                _SKIP_STEPS, {"sid": facts.id, "names": ending.skip, "now": now, "reason": ending.skip_reason}
            )
        if ending.queue:
            await session.execute(_QUEUE_STEPS, {"sid": facts.id, "names": ending.queue, "now": now})
        if facts.changed:
            await session.execute(
                _SET_SUBMISSION, {"sid": facts.id, "status": facts.status, "completed_at": facts.completed_at}
            )


@asynccontextmanager
async def _locked(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> AsyncIterator[_Locked]:
    """The submission locked (None facts: it is gone) in a transaction that commits as the block ends;
    its events are in ``.events.envelopes`` after it, to publish."""
    engine = postgres_engine(sessions)
    if engine is not None:
        async with driver_connection(engine) as connection, connection.transaction():
            yield await _DriverLocked.read(engine, connection, submission_id)
        return
    async with unit_of_work(sessions, None) as work:
        yield await _SessionLocked.read(work, submission_id)


@cache
def _submission_update(columns: tuple[str, ...]) -> Any:
    """UPDATE of these submission columns, built once per set of columns."""
    values = {name: bindparam(name, type_=_submissions.c[name].type) for name in columns}
    return update(_submissions).where(_submissions.c.id == bindparam("sid")).values(values)


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
    submission_values: Mapping[str, Any] | None = None,
    carried: list[Delivery] | None = None,
    known: SubmissionFacts | None = None,
    start: UnwrittenStart | None = None,
) -> bool:
    """Move a step to a terminal state, start what follows, finish the submission.

    Returns False when the step had already finished (nothing changed), so a
    webhook and a poll racing to complete the same step record it once.
    ``submission_values``: columns of the submission the step sets, written in the same transaction.
    ``carried``: the events to publish and steps to queue are added there for the caller to send
    (a worker's job: in the MULTI/EXEC that finishes it, core.queues.CARRIED_TO_FINISH) instead of
    sent here after the commit.
    ``known``: the submission as the step's start read it (``workers.runner``), to decide the end
    from on PostgreSQL without reading it again; its write still checks that nothing it depends
    on has changed since.
    ``start``: the step's start, not written yet (PostgreSQL only): written by the same statement,
    its step.running event before the end's.
    """
    topic = keys.submission_topic(submission_id)
    who = actor or f"worker:{step}"

    def plan(facts: SubmissionFacts, events: StagedEvents) -> _Plan | None:
        """What the end writes and publishes, given the facts; None when the step has already ended."""
        if step not in facts.states or facts.states[step].terminal:
            return None
        now = utcnow()
        kept = result if result is not None else facts.results[step]
        ending = _Ending(step, state.value, kept, error, start=start)
        if start is not None:
            running = {"step": step, "attempt": start.attempt}
            events.staged.append(PendingEvent(topic, "step.running", start.at, running, who, None))
        facts.states[step] = state
        data: dict[str, Any] = {"step": step, "state": state.value, "result": kept}
        if error:
            data["error"] = error
        started = start.at if start is not None else facts.started_at[step]
        if started is not None:
            data["duration_ms"] = int((now - started).total_seconds() * 1000)
        events.stage(topic, f"step.{state.value}", data, actor=who)
        if quarantine:
            facts.status, facts.changed = SubmissionStatus.quarantined.value, True
        _advance(events, topic, facts, ending)
        _finish_submission_if_done(events, facts, now)
        return ending, now

    engine = postgres_engine(sessions)
    if start is not None and engine is None:
        raise ValueError("a step's start is written with its end on PostgreSQL only")
    ended = None
    if engine is not None:
        # An end that keeps the step's result needs it as it is now: the step may have written it
        # since it started (the admin step's refusal, say), which its start could not read.
        ended = await _end_if_unchanged(
            engine, submission_id, plan, known if result is not None else None, submission_values or {}
        )
    if ended is None:
        async with _locked(sessions, submission_id) as locked:
            facts = locked.facts
            planned = plan(facts, locked.events) if facts is not None else None
            if facts is None or planned is None:
                return False
            ending, now = planned
            if submission_values:
                await locked.set_submission(submission_values)
            await locked.write(facts, ending, now)
        ended = locked.events.envelopes, ending.queue
    envelopes, queue = ended
    if carried is not None:
        carried.append(Delivery(tuple(envelopes), tuple(queue), submission_id))
    else:
        await publish_and_enqueue(redis, envelopes, queue, submission_id)
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
    async with _locked(sessions, submission_id) as locked:
        facts = locked.facts
        if facts is None or facts.completed_at is not None:
            return [], None
        now = utcnow()
        ending = _Ending()
        _advance(locked.events, topic, facts, ending)
        _finish_submission_if_done(locked.events, facts, now)
        await locked.write(facts, ending, now)
        finished = facts.status if facts.completed_at is not None else None
    await publish_and_enqueue(redis, locked.events.envelopes, ending.queue, submission_id)
    return ending.queue, finished


def _advance(batch: StagedEvents, topic: str, facts: SubmissionFacts, ending: _Ending) -> None:
    """Decide which steps are now ready (queued) and which can never run (skipped)."""
    states = facts.states
    quarantined = facts.status == SubmissionStatus.quarantined.value
    never = [name for name, state in states.items() if state == StepState.pending] if quarantined else []
    never += [name for name in blocked_steps(states) if name not in never]
    if never:
        reason = "file quarantined" if quarantined else "an earlier step failed"
        ending.skip, ending.skip_reason = never, reason
        for name in never:
            states[name] = StepState.skipped
            batch.stage(topic, "step.skipped", {"step": name, "state": "skipped", "reason": reason})
    ending.queue = ready_steps(states)
    for name in ending.queue:
        states[name] = StepState.queued
        batch.stage(topic, "step.queued", {"step": name})


def _finish_submission_if_done(batch: StagedEvents, facts: SubmissionFacts, now: datetime) -> None:
    quarantined = facts.status == SubmissionStatus.quarantined.value
    status = overall_status(facts.states, quarantined=quarantined)
    if status == SubmissionStatus.processing or facts.completed_at is not None:
        return
    facts.status, facts.completed_at, facts.changed = status.value, now, True
    summary = {"status": status.value, "steps": {name: state.value for name, state in facts.states.items()}}
    batch.stage(keys.submission_topic(facts.id), f"submission.{status.value}", summary)
    batch.stage(
        keys.course_staff_topic(facts.course_id),
        "submission.finished",
        {"submission_id": facts.id, "assignment_id": facts.assignment_id, "status": status.value},
    )
