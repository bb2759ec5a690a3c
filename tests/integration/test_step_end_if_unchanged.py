"""A step's usual end on PostgreSQL: the facts read unlocked, then written only if unchanged.

Two statements, each its own transaction, instead of BEGIN, a locking read, the write and
COMMIT. What must hold: when another step of the submission ends between the read and the
write, even one still holding its locks as the write starts, the write changes nothing and
the locked path decides, so the submission still completes exactly once.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event, select, text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from core import steps
from core.models import Event, Submission, SubmissionStep
from core.pipeline import StepState
from core.steps import finish_step
from tests.fixtures.conditions import until
from tests.fixtures.factories import Factory

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)

FAN_OUT = ("similarity", "admin", "receipt", "thumbnail")


async def _two_steps_left(factory: Factory, sessions: Any) -> int:
    """A submission whose every step has succeeded but admin and receipt, both running."""
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
            .where(SubmissionStep.submission_id == submission.id, SubmissionStep.step.in_(("admin", "receipt")))
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


async def test_an_uncontested_end_is_two_statements_without_begin_or_commit(
    factory: Factory, sessions: Any, engine: AsyncEngine, redis: Any
) -> None:
    warm_up, submission_id = await _two_steps_left(factory, sessions), await _two_steps_left(factory, sessions)
    queries: list[str] = []
    await engine.dispose()  # every connection from here on is a new one, logged

    def log_driver(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.driver_connection.add_query_logger(lambda query: queries.append(query.query))

    event.listen(engine.sync_engine, "connect", log_driver)
    # A new connection's first statements also ask the server about types: not the end's own.
    await finish_step(sessions, redis, warm_up, "admin", StepState.succeeded, result={"ok": 1})
    await asyncio.sleep(0)  # asyncpg hands each logged query to the loop's next turn
    queries.clear()
    await finish_step(sessions, redis, submission_id, "admin", StepState.succeeded, result={"ok": 1})
    await asyncio.sleep(0)
    event.remove(engine.sync_engine, "connect", log_driver)

    assert len(queries) == 2, [" ".join(query.split())[:70] for query in queries]
    assert not [query for query in queries if query.strip().upper() in ("BEGIN;", "BEGIN", "COMMIT;", "COMMIT")]
    status, states, types = await _outcome(sessions, submission_id)
    assert status == "processing" and states["admin"] == "succeeded" and states["receipt"] == "running"
    assert types == ["step.succeeded"]


async def test_an_end_racing_another_that_holds_its_locks_writes_nothing_and_the_locked_path_decides(
    factory: Factory, sessions: Any, engine: AsyncEngine, redis: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """admin's end reads receipt running; receipt's end (another transaction) locks the submission
    and commits only once admin's write is waiting for that lock. Written on what it read, admin's
    end would leave the submission processing for ever, each end thinking the other still runs."""
    submission_id = await _two_steps_left(factory, sessions)
    real_driver_rows = steps.driver_rows
    guarded_writes: list[bool] = []

    async def receipt_ends_meanwhile(engine_: AsyncEngine, statement: Any, parameters: Any) -> list[Any]:
        if statement is not steps._WRITE_ENDING_IF_UNCHANGED_PG:
            return await real_driver_rows(engine_, statement, parameters)
        async with engine.connect() as other:
            await other.execute(text("SELECT 1 FROM submissions WHERE id = :id FOR UPDATE"), {"id": submission_id})
            await other.execute(
                update(SubmissionStep)
                .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == "receipt")
                .values(state=StepState.succeeded.value)
            )
            write = asyncio.ensure_future(real_driver_rows(engine_, statement, parameters))

            async def waiting_for_the_lock() -> bool:
                async with engine.connect() as watcher:
                    waiting = await watcher.scalar(
                        text(
                            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                            " AND wait_event_type = 'Lock' AND query LIKE '%guard%'"
                        )
                    )
                return bool(waiting) or write.done()

            await until(waiting_for_the_lock, "admin's write waiting for receipt's lock", within=10)
            await other.commit()
            rows = await write
        guarded_writes.append(bool(rows[0]["applied"]))
        return rows

    monkeypatch.setattr(steps, "driver_rows", receipt_ends_meanwhile)
    assert await finish_step(sessions, redis, submission_id, "admin", StepState.succeeded, result={"ok": 1})

    assert guarded_writes == [False]
    status, states, types = await _outcome(sessions, submission_id)
    assert status == "complete"
    assert states["admin"] == states["receipt"] == "succeeded"
    # Only admin's end wrote events (receipt's was a bare UPDATE): its end, then the completion.
    assert types == ["step.succeeded", "submission.complete"]
