"""Recording an accepted upload on PostgreSQL in two statements: its id, then everything at once.

The submission, its step rows and its events (``submission.received`` on the submission's topic,
``submission.arrived`` on the course staff's) are one statement, its own transaction: the
events' seq bump, which every upload to the course waits for on the staff topic's row, holds
that row only while the statement runs. The id is taken from the submissions' sequence first,
so the events are built here as every other writer builds them (``core.events``).

A unique constraint (the attempt number taken meanwhile, the idempotency key used by a
concurrent upload) raises ``asyncpg.UniqueViolationError`` and writes nothing: the caller then
decides in a transaction of its own (``api.intake``), as SQLite always does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import String, Table, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import driver_connection, driver_statement
from core.events import EVENT_ARRAYS, Envelope, PendingEvent, envelopes_of, event_arrays, events_ctes
from core.models import Submission, UTCDateTime

_submissions: Table = Submission.__table__  # type: ignore[assignment]
# Every column the upload sets; the others keep their defaults (NULL).
RECORDED_COLUMNS = (
    "id",
    "assignment_id",
    "user_id",
    "attempt",
    "late",
    "sha256",
    "size",
    "original_filename",
    "content_type",
    "kind",
    "storage_key",
    "status",
    "idempotency_key",
    "upload_started_at",
    "received_at",
)

_RESERVE_ID = text("SELECT nextval(pg_get_serial_sequence('submissions', 'id')) AS id")
_RECORD = text(
    f"""
    WITH inserted AS (
        INSERT INTO submissions ({", ".join(RECORDED_COLUMNS)})
        VALUES ({", ".join(f":{column}" for column in RECORDED_COLUMNS)})
        RETURNING id
    ), steps AS (
        INSERT INTO submission_steps (submission_id, step, state, attempts, queued_at, result)
        SELECT inserted.id, s.step, s.state, 0, s.queued_at, CAST('{{}}' AS json)
        FROM inserted CROSS JOIN unnest(:step_names, :step_states, :step_queued_ats)
            WITH ORDINALITY AS s(step, state, queued_at, ord)
        ORDER BY s.ord
    ), {events_ctes(after="inserted")}
    SELECT topic, seq FROM bumped
    """
).bindparams(
    *(bindparam(column, type_=_submissions.c[column].type) for column in RECORDED_COLUMNS),
    bindparam("step_names", type_=ARRAY(String)),
    bindparam("step_states", type_=ARRAY(String)),
    bindparam("step_queued_ats", type_=ARRAY(UTCDateTime())),
    *EVENT_ARRAYS,
)


async def reserve_submission_id(engine: AsyncEngine) -> int:
    async with driver_connection(engine) as connection:
        rows = await driver_statement(_RESERVE_ID, engine).fetch(connection, {})
    return int(rows[0]["id"])


async def record_upload(
    engine: AsyncEngine,
    submission: Mapping[str, Any],
    steps: Sequence[tuple[str, str, datetime | None]],
    events: list[PendingEvent],
) -> list[Envelope]:
    """Write ``submission`` (every column of RECORDED_COLUMNS, its reserved id included), its
    ``steps`` (name, state, queued at; in order) and ``events``; the events' envelopes."""
    names, states, queued_ats = (list(column) for column in zip(*steps, strict=True))
    parameters = {
        **submission,
        "step_names": names,
        "step_states": states,
        "step_queued_ats": queued_ats,
        **event_arrays(events),
    }
    async with driver_connection(engine) as connection:
        rows = await driver_statement(_RECORD, engine).fetch(connection, parameters)
    return envelopes_of(events, {row["topic"]: int(row["seq"]) for row in rows})
