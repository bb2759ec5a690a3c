"""A step's usual end on PostgreSQL: the facts read unlocked, then written only if unchanged.

Two statements, each its own transaction, instead of BEGIN, a locking read, the write and
COMMIT. What must hold: when another step of the submission ends between the read and the
write, even one still holding its locks as the write starts, the write changes nothing and the
end is decided again (from the facts the write found, or under the lock), so the submission
still completes exactly once; another step merely starting meanwhile is no conflict.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core import steps
from core.clock import utcnow
from core.models import Event, Submission, SubmissionStep
from core.pipeline import StepState
from core.steps import finish_step
from tests.fixtures.conditions import until
from tests.fixtures.factories import Factory

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

FAN_OUT = ("similarity", "admin", "receipt", "thumbnail")


async def _two_steps_left(factory: Factory, sessions: Any, running: tuple[str, ...] = ("admin", "receipt")) -> int:
    """A submission whose every step has succeeded but ``running`` (admin and receipt)."""
    world = await factory.world()
    submission = await factory.submission(world, b"essay\n")
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission.id)
            .values(state=StepState.succeeded.value)
        )
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission.id, SubmissionStep.step.in_(running))
            .values(state=StepState.running.value)
        )
    return submission.id


async def _outcome(sessions: Any, submission_id: int) -> tuple[str, dict[str, str], list[str]]:
    async with sessions() as session:
        status = await session.scalar(select(Submission.status).where(Submission.id == submission_id))
        states = dict(
            (
                await session.execute(
                    select(SubmissionStep.step, SubmissionStep.state).where(
                        SubmissionStep.submission_id == submission_id
                    )
                )
            ).all()
        )
        types = list(
            await session.scalars(
                select(Event.type).where(Event.topic == f"submission.{submission_id}").order_by(Event.seq)
            )
        )
    return str(status), states, types


@asynccontextmanager
async def _statements_sent(
    engine: AsyncEngine, sessions: Any, redis: Any, warm_up: int, step: str = "admin"
) -> AsyncIterator[list[str]]:
    """The statements sent to PostgreSQL in the block, once a connection has ended ``warm_up``'s
    ``step`` (a new connection's first statements also ask the server about types)."""
    queries: list[str] = []
    await engine.dispose()  # every connection from here on is a new one, logged

    def log_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda query: queries.append(query.query))

    event.listen(engine.sync_engine, "connect", log_driver)
    try:
        values = {"thumbnail_key": "warm-up.png"} if step == "thumbnail" else None
        known = await _facts(engine, warm_up)
        await finish_step(
            sessions, redis, warm_up, step, StepState.succeeded, result={}, submission_values=values, known=known
        )
        await asyncio.sleep(0)  # asyncpg hands each logged query to the loop's next turn
        queries.clear()
        yield queries
        await asyncio.sleep(0)
    finally:
        event.remove(engine.sync_engine, "connect", log_driver)


def _summary(queries: list[str]) -> list[str]:
    return [" ".join(query.split())[:70] for query in queries]


async def test_an_uncontested_end_is_two_statements_without_begin_or_commit(
    factory: Factory, sessions: Any, engine: AsyncEngine, redis: Any
) -> None:
    warm_up, submission_id = await _two_steps_left(factory, sessions), await _two_steps_left(factory, sessions)
    async with _statements_sent(engine, sessions, redis, warm_up) as queries:
        await finish_step(sessions, redis, submission_id, "admin", StepState.succeeded, result={"ok": 1})

    assert len(queries) == 2, _summary(queries)
    assert not [query for query in queries if query.strip().upper() in ("BEGIN;", "BEGIN", "COMMIT;", "COMMIT")]
    status, states, types = await _outcome(sessions, submission_id)
    assert status == "processing" and states["admin"] == "succeeded" and states["receipt"] == "running"
    assert types == ["step.succeeded"]


async def test_an_end_decided_from_what_its_start_read_is_one_statement_and_still_sees_changes_since(
    factory: Factory, sessions: Any, engine: AsyncEngine, redis: Any
) -> None:
    """As the worker's end: the facts its step's start read are known. Uncontested, the end is its
    write alone; when receipt ended since (the known facts say it runs), the write finds that and
    the end, decided again, completes the submission."""
    warm_up, warm_up_again, fresh, stale = [await _two_steps_left(factory, sessions) for _ in range(4)]
    known = {submission_id: await _facts(engine, submission_id) for submission_id in (fresh, stale)}
    await finish_step(sessions, redis, stale, "receipt", StepState.succeeded, result={})

    async with _statements_sent(engine, sessions, redis, warm_up) as uncontested:
        await finish_step(sessions, redis, fresh, "admin", StepState.succeeded, result={"ok": 1}, known=known[fresh])
    async with _statements_sent(engine, sessions, redis, warm_up_again) as changed_since:
        await finish_step(sessions, redis, stale, "admin", StepState.succeeded, result={"ok": 1}, known=known[stale])

    assert len(uncontested) == 1 and "guard" in uncontested[0], _summary(uncontested)
    assert len(changed_since) == 2 and all("guard" in query for query in changed_since), _summary(changed_since)
    assert (await _outcome(sessions, fresh))[0] == "processing"
    status, states, types = await _outcome(sessions, stale)
    assert status == "complete" and states["admin"] == states["receipt"] == "succeeded"
    assert types == ["step.succeeded", "step.succeeded", "submission.complete"]


async def test_an_end_that_also_sets_a_column_of_the_submission_is_the_same_one_statement(
    factory: Factory, sessions: Any, engine: AsyncEngine, redis: Any
) -> None:
    """The thumbnail's end records the preview's key with the submission: in the end's own write,
    also when it is the end that completes the submission."""
    warm_up, submission_id = [await _two_steps_left(factory, sessions, running=("thumbnail",)) for _ in range(2)]
    known = await _facts(engine, submission_id)

    async with _statements_sent(engine, sessions, redis, warm_up, step="thumbnail") as queries:
        await finish_step(
            sessions,
            redis,
            submission_id,
            "thumbnail",
            StepState.succeeded,
            result={},
            submission_values={"thumbnail_key": "previews/essay.png"},
            known=known,
        )

    assert len(queries) == 1 and "guard" in queries[0], _summary(queries)
    async with sessions() as session:
        key = await session.scalar(select(Submission.thumbnail_key).where(Submission.id == submission_id))
    status, _, types = await _outcome(sessions, submission_id)
    assert key == "previews/essay.png"
    assert status == "complete" and types == ["step.succeeded", "submission.complete"]


@pytest.mark.parametrize("attempts", [steps.END_ATTEMPTS, 0])
async def test_an_end_that_writes_its_steps_start_counts_the_attempt_and_sends_the_start_first(
    factory: Factory,
    sessions: Any,
    engine: AsyncEngine,
    redis: Any,
    monkeypatch: pytest.MonkeyPatch,
    attempts: int,
) -> None:
    """A quick step's start is written by its end (workers.runner.StartOwed): in the end's one
    statement, or under the lock when the optimistic write gives up (no attempts), the row gets
    its attempt and start time and the page its step.running before the end."""
    warm_up, submission_id = await _two_steps_left(factory, sessions), await _two_steps_left(factory, sessions)
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == "admin")
            .values(state=StepState.queued.value, attempts=0, started_at=None)
        )
    known = await _facts(engine, submission_id)
    started = utcnow() - timedelta(seconds=2)
    monkeypatch.setattr(steps, "END_ATTEMPTS", attempts)

    async with _statements_sent(engine, sessions, redis, warm_up) as queries:
        ended = await finish_step(
            sessions,
            redis,
            submission_id,
            "admin",
            StepState.succeeded,
            result={"ok": 1},
            known=known,
            start=steps.UnwrittenStart(started, 1),
        )

    assert ended
    if attempts:
        assert len(queries) == 1 and "guard" in queries[0], _summary(queries)
    async with sessions() as session:
        row = await session.scalar(
            select(SubmissionStep).where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == "admin")
        )
        trail = list(
            await session.scalars(select(Event).where(Event.topic == f"submission.{submission_id}").order_by(Event.seq))
        )
    assert row is not None and (row.state, row.attempts, row.started_at) == ("succeeded", 1, started)
    assert [(event.type, event.data["step"]) for event in trail] == [
        ("step.running", "admin"),
        ("step.succeeded", "admin"),
    ]
    running, succeeded = trail
    assert (running.data, running.at, running.actor) == ({"step": "admin", "attempt": 1}, started, "worker:admin")
    assert succeeded.seq == running.seq + 1 and succeeded.data["duration_ms"] >= 2000


async def _facts(engine: AsyncEngine, submission_id: int) -> steps.SubmissionFacts:
    rows = await steps.driver_rows(engine, steps._READ_PG, {"submission_id": submission_id})
    return steps._facts_of(submission_id, rows[0], rows)


@pytest.mark.parametrize("attempts", [steps.END_ATTEMPTS, 1])
async def test_an_end_racing_another_that_holds_its_locks_writes_nothing_and_is_decided_again(
    factory: Factory,
    sessions: Any,
    engine: AsyncEngine,
    redis: Any,
    monkeypatch: pytest.MonkeyPatch,
    attempts: int,
) -> None:
    """admin's end reads receipt running; receipt's end (another transaction) locks the submission
    and commits only once admin's write is waiting for that lock. Written on what it read, admin's
    end would leave the submission processing for ever, each end thinking the other still runs.
    Decided again from the facts the write found (or, with no attempts left, under the lock), it
    completes the submission."""
    submission_id = await _two_steps_left(factory, sessions)
    guarded_writes = _race_first_guarded_write(monkeypatch, engine, submission_id, "receipt", StepState.succeeded)
    monkeypatch.setattr(steps, "END_ATTEMPTS", attempts)
    assert await finish_step(sessions, redis, submission_id, "admin", StepState.succeeded, result={"ok": 1})

    assert guarded_writes == [False, True] if attempts > 1 else [False]
    status, states, types = await _outcome(sessions, submission_id)
    assert status == "complete"
    assert states["admin"] == states["receipt"] == "succeeded"
    # Only admin's end wrote events (receipt's was a bare UPDATE): its end, then the completion.
    assert types == ["step.succeeded", "submission.complete"]


async def test_another_step_starting_meanwhile_is_no_conflict(
    factory: Factory, sessions: Any, engine: AsyncEngine, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """receipt, queued when admin's end read it, starts running before admin's end is written:
    nothing admin's end decides depends on that, so its first write stands."""
    submission_id = await _two_steps_left(factory, sessions)
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == "receipt")
            .values(state=StepState.queued.value)
        )
    guarded_writes = _race_first_guarded_write(monkeypatch, engine, submission_id, "receipt", StepState.running)
    assert await finish_step(sessions, redis, submission_id, "admin", StepState.succeeded, result={"ok": 1})

    assert guarded_writes == [True]
    status, states, types = await _outcome(sessions, submission_id)
    assert status == "processing" and states["admin"] == "succeeded" and states["receipt"] == "running"
    assert types == ["step.succeeded"]


async def test_another_step_ending_meanwhile_is_no_conflict_while_a_third_is_still_to_end(
    factory: Factory, sessions: Any, engine: AsyncEngine, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """admin, receipt and thumbnail running: receipt ends before admin's end is written. With
    thumbnail still to end, admin's end finishes nothing either way, so its first write stands;
    thumbnail's end then completes the submission."""
    submission_id = await _two_steps_left(factory, sessions, running=("admin", "receipt", "thumbnail"))
    guarded_writes = _race_first_guarded_write(monkeypatch, engine, submission_id, "receipt", StepState.succeeded)
    assert await finish_step(sessions, redis, submission_id, "admin", StepState.succeeded, result={"ok": 1})
    assert guarded_writes == [True]
    status, states, _ = await _outcome(sessions, submission_id)
    assert status == "processing" and states["thumbnail"] == "running"

    assert await finish_step(sessions, redis, submission_id, "thumbnail", StepState.succeeded, result={})
    status, states, types = await _outcome(sessions, submission_id)
    assert status == "complete" and set(states.values()) == {"succeeded"}
    assert types == ["step.succeeded", "step.succeeded", "submission.complete"]


def _race_first_guarded_write(
    monkeypatch: pytest.MonkeyPatch, engine: AsyncEngine, submission_id: int, step: str, state: StepState
) -> list[bool]:
    """Before the first guarded write, another transaction locks the submission and moves ``step``
    to ``state``, committing only once the write waits for its lock. Returns each guarded write's
    ``applied``, as they happen."""
    real_driver_rows = steps.driver_rows
    applied: list[bool] = []

    async def racing(engine_: AsyncEngine, statement: Any, parameters: Any) -> list[Any]:
        if statement is not steps._WRITE_ENDING_IF_UNCHANGED_PG or applied:
            rows = await real_driver_rows(engine_, statement, parameters)
        else:
            rows = await _write_while_another_commits(
                engine, submission_id, step, state, real_driver_rows(engine_, statement, parameters)
            )
        if statement is steps._WRITE_ENDING_IF_UNCHANGED_PG:
            applied.append(bool(rows[0]["applied"]))
        return rows

    monkeypatch.setattr(steps, "driver_rows", racing)
    return applied


async def _write_while_another_commits(
    engine: AsyncEngine, submission_id: int, step: str, state: StepState, write: Any
) -> list[Any]:
    async with engine.connect() as other:
        await other.execute(text("SELECT 1 FROM submissions WHERE id = :id FOR UPDATE"), {"id": submission_id})
        await other.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == step)
            .values(state=state.value)
        )
        writing = asyncio.ensure_future(write)

        async def waiting_for_the_lock() -> bool:
            async with engine.connect() as watcher:
                waiting = await watcher.scalar(
                    text(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                        " AND wait_event_type = 'Lock' AND query LIKE '%guard%'"
                    )
                )
            return bool(waiting) or writing.done()

        await until(waiting_for_the_lock, "the end's write waiting for the other transaction's lock", within=10)
        await other.commit()
        rows: list[Any] = await writing
    return rows
