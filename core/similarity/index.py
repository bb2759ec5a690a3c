"""The inverted fingerprint index in the database: (assignment, hash) → submission, position.

A check looks up only its own hashes, served by ``ix_fingerprints_lookup``
(assignment_id, hash), so its cost grows with its own fingerprints and the
matches found, not with how many submissions the assignment already has.

On PostgreSQL a check is one statement each way:

- the look-up sends all its hashes as one array and probes the index once per
  hash (a LATERAL subquery per array element, fenced by its ``LIMIT``); the
  hits come back grouped, one row per holding submission with its hashes; the
  checked submission's own rows, written just before, are passed over. No
  hash is read for more than ``max_holders`` other holders: one held that widely
  is boilerplate, so a look-up's cost does not grow with the assignment even
  when every earlier submission shares the question's text. The
  plan does not depend on planner statistics: with an ``IN (…)`` list of 500
  hashes and a table never analysed (a new assignment on a busy installation,
  autovacuum behind), PostgreSQL scanned the assignment's whole slice of the
  index for every batch, and its CPU per check grew with the assignment;
- the fingerprints are written as two arrays unnested server-side, numbered
  in order for their key (submission, ordinal); a re-run, whose rows are
  already there, deletes them first in the same transaction.

Both send their arrays as ``int8_vector``, straight from numpy
(core.int8_vectors), not element by element.

SQLite (one machine, few submissions) keeps plain batched statements.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import asyncpg
import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.sql.elements import TextClause

from core import int8_vectors
from core.db import driver_connection, driver_statement, postgres_engine
from core.models import Fingerprint as FingerprintRow
from core.models import Submission
from core.similarity.winnowing import Fingerprint, Fingerprints

# Bind parameters per IN list on SQLite: well inside its limit.
LOOKUP_BATCH = 500
INSERT_BATCH = 2000

LOOKUP_SQL = text(
    """
    WITH hits AS (
        SELECT m.submission_id, string_agg(int8send(q.hash), '') AS hashes,
               string_agg(int4send(m.position), '') AS positions
        FROM unnest(CAST(:hashes AS int8_vector)) AS q(hash)
        CROSS JOIN LATERAL (
            SELECT f.submission_id, f.position
            FROM fingerprints AS f
            WHERE f.assignment_id = :assignment_id AND f.hash = q.hash AND f.submission_id <> :submission_id
            LIMIT :max_holders
        ) AS m
        GROUP BY m.submission_id
    )
    SELECT hits.submission_id, s.user_id, s.storage_key, s.kind, hits.hashes, hits.positions
    FROM hits JOIN submissions AS s ON s.id = hits.submission_id
    """
)

# A re-run's earlier rows cannot be deleted in the INSERT's own statement: its key check still
# sees them (the statement's snapshot), so a re-run deletes them first, in one transaction with it.
DELETE_SQL = text("DELETE FROM fingerprints WHERE submission_id = :submission_id")
INSERT_SQL = text(
    """
    INSERT INTO fingerprints (submission_id, ordinal, assignment_id, hash, position)
    SELECT :submission_id, t.ordinal - 1, :assignment_id, t.hash, t.position
    FROM unnest(CAST(:hashes AS int8_vector), CAST(:positions AS int8_vector))
         WITH ORDINALITY AS t(hash, position, ordinal)
    """
)


class StoredFile(NamedTuple):
    storage_key: str
    kind: str


@dataclass
class Hits:
    """Which other submissions hold the looked-up hashes, whose they are and where their files are.

    ``boilerplate``: hashes held by more than ``max_holders`` submissions (the question text, a
    template, a much-quoted source). They have no holders here: they count for no match.
    ``submissions``, ``hashes``, ``offsets``: every place another student's submission holds a
    looked-up hash (boilerplate left out), as three arrays of the same length: which submission,
    which hash, and where, as a character offset in its extracted text (what matched passages
    are aligned from). Arrays, as a common phrase has hundreds of holders.
    """

    owners: dict[int, int] = field(default_factory=dict)
    files: dict[int, StoredFile] = field(default_factory=dict)
    boilerplate: set[int] = field(default_factory=set)
    submissions: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    hashes: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))
    offsets: npt.NDArray[np.int64] = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def holders(self) -> dict[int, set[int]]:
        """The holders of each hash."""
        holders: dict[int, set[int]] = {}
        for submission_id, value in zip(self.submissions.tolist(), self.hashes.tolist(), strict=True):
            holders.setdefault(value, set()).add(submission_id)
        return holders

    def places_of(self, submission_id: int) -> dict[int, list[int]]:
        """Where ``submission_id`` holds each of its hashes."""
        held = self.submissions == submission_id
        places: dict[int, list[int]] = {}
        for value, offset in zip(self.hashes[held].tolist(), self.offsets[held].tolist(), strict=True):
            places.setdefault(value, []).append(offset)
        return places


def lookup_statement(
    assignment_id: int, submission_id: int, hashes: Sequence[int] | npt.NDArray[np.int64], max_holders: int
) -> tuple[TextClause, dict[str, Any]]:
    """The PostgreSQL look-up and its parameters (also for EXPLAIN)."""
    return LOOKUP_SQL, {
        "hashes": hashes,
        "assignment_id": assignment_id,
        "submission_id": submission_id,
        "max_holders": max_holders,
    }


async def lookup(
    sessions: async_sessionmaker[AsyncSession],
    assignment_id: int,
    hashes: Iterable[int] | npt.NDArray[np.int64],
    *,
    submission_id: int,
    exclude_user_id: int,
    max_holders: int,
) -> Hits:
    """Other students' submissions to this assignment that share any of ``hashes``, those of
    submission ``submission_id`` (the one checked).

    Its own rows are not read back (every check writes them before it looks up: a third of a
    look-up's rows, read and sent only to be dropped) and it counts as one holder of each of
    its hashes. The same student's other attempts are left out: a resubmission that reuses the
    student's earlier draft is not copying. A hash held by more than ``max_holders``
    submissions (the one checked and the student's other attempts included) is boilerplate: at
    most ``max_holders`` holders of any hash besides the one checked are read, so the cost of
    a look-up stays bounded however many submissions the assignment has.
    """
    values = hashes if isinstance(hashes, np.ndarray) else np.fromiter(hashes, np.int64)
    unique = np.unique(values)
    if not unique.size:
        return Hits()
    engine = postgres_engine(sessions)
    if engine is not None:
        # One row per holding submission with the hashes it holds: tens of thousands of hits arrive
        # as a few hundred arrays, and submissions is joined once per holder, not once per hit.
        # On the driver's own connection, as its own transaction: the arrays are most of the client's work.
        statement, parameters = lookup_statement(assignment_id, submission_id, unique, max_holders)
        rows = await _rows_sending_vectors(engine, statement, parameters)
        held = [
            Held(
                row["submission_id"],
                row["user_id"],
                row["storage_key"],
                row["kind"],
                np.frombuffer(row["hashes"], ">i8"),
                np.frombuffer(row["positions"], ">i4"),
            )
            for row in rows
        ]
    else:
        async with sessions() as session:
            held = await _lookup_in_batches(session, assignment_id, submission_id, unique.tolist())
    return _hits(held, exclude_user_id, max_holders)


async def _lookup_in_batches(
    session: AsyncSession, assignment_id: int, submission_id: int, unique: list[int]
) -> list[Held]:
    by_submission: dict[tuple[int, int], tuple[Any, ...]] = {}
    for start in range(0, len(unique), LOOKUP_BATCH):
        rows = await session.execute(
            select(
                FingerprintRow.hash,
                FingerprintRow.position,
                FingerprintRow.submission_id,
                Submission.user_id,
                Submission.storage_key,
                Submission.kind,
            )
            .join(Submission, Submission.id == FingerprintRow.submission_id)
            .where(
                FingerprintRow.assignment_id == assignment_id,
                FingerprintRow.submission_id != submission_id,
                FingerprintRow.hash.in_(unique[start : start + LOOKUP_BATCH]),
            )
        )
        for value, position, submission_id, user_id, storage_key, kind in rows:
            holder = by_submission.setdefault((submission_id, user_id), (storage_key, kind, [], []))
            holder[2].append(value)
            holder[3].append(position)
    return [
        Held(submission_id, user_id, storage_key, kind, np.array(hashes, np.int64), np.array(positions, np.int64))
        for (submission_id, user_id), (storage_key, kind, hashes, positions) in by_submission.items()
    ]


class Held(NamedTuple):
    """One holding submission's hits: the hashes it holds and where (in the same order).

    On PostgreSQL the look-up answers them as each value's binary form, joined (``int8send``,
    ``int4send``): read as arrays in one go, not thousands of integers decoded one by one (a
    check's hits cost the client and the server about a millisecond less each, measured on
    5,400 hits)."""

    submission_id: int
    user_id: int
    storage_key: str
    kind: str
    hashes: npt.NDArray[Any]
    positions: npt.NDArray[Any]


def _hits(held: list[Held], exclude_user_id: int, max_holders: int) -> Hits:
    if not held:
        return Hits()
    lengths = np.array([holder.hashes.size for holder in held], dtype=np.int64)
    hashes = np.concatenate([holder.hashes for holder in held]).astype(np.int64)
    offsets = np.concatenate([holder.positions for holder in held]).astype(np.int64)
    submissions = np.repeat(np.array([holder.submission_id for holder in held], dtype=np.int64), lengths)
    others = np.repeat(np.array([holder.user_id != exclude_user_id for holder in held]), lengths)
    # Per row read, as the look-up's LIMIT counts them; the submission checked is one holder more.
    values, holders = np.unique(hashes, return_counts=True)
    boilerplate = values[holders >= max_holders]
    useful = others & ~np.isin(hashes, boilerplate)
    by_id = {holder.submission_id: holder for holder in held}
    matched = {submission_id: by_id[submission_id] for submission_id in np.unique(submissions[useful]).tolist()}
    return Hits(
        owners={submission_id: holder.user_id for submission_id, holder in matched.items()},
        files={submission_id: StoredFile(holder.storage_key, holder.kind) for submission_id, holder in matched.items()},
        boilerplate=set(boilerplate.tolist()),
        submissions=submissions[useful],
        hashes=hashes[useful],
        offsets=offsets[useful],
    )


@asynccontextmanager
async def _sending_vectors(engine: Any) -> AsyncIterator[Any]:
    """A pooled asyncpg connection (``driver_connection``) that sends numpy arrays as they are (core.int8_vectors)."""
    async with driver_connection(engine) as connection:
        await int8_vectors.prepare(connection)
        yield connection


async def _rows_sending_vectors(engine: Any, statement: TextClause, parameters: dict[str, Any]) -> list[Any]:
    """``statement`` on its own (its own transaction); its rows."""
    async with _sending_vectors(engine) as connection:
        return await driver_statement(statement, engine).fetch(connection, parameters)


async def replace(
    sessions: async_sessionmaker[AsyncSession],
    assignment_id: int,
    submission_id: int,
    fingerprints: Fingerprints | Sequence[Fingerprint],
) -> None:
    """Index a submission's fingerprints; a re-run replaces its earlier rows. Committed on return."""
    prints = Fingerprints.of(fingerprints)
    engine = postgres_engine(sessions)
    if engine is not None:
        parameters = {
            "assignment_id": assignment_id,
            "submission_id": submission_id,
            "hashes": prints.hashes,
            "positions": prints.starts,
        }
        try:
            await _rows_sending_vectors(engine, INSERT_SQL, parameters)  # one statement: its own transaction
        except asyncpg.UniqueViolationError:  # a re-run
            async with _sending_vectors(engine) as connection, connection.transaction():
                await driver_statement(DELETE_SQL, engine).fetch(connection, parameters)
                await driver_statement(INSERT_SQL, engine).fetch(connection, parameters)
        return
    async with sessions() as session, session.begin():
        await session.execute(delete(FingerprintRow).where(FingerprintRow.submission_id == submission_id))
        rows = [
            {"submission_id": submission_id, "ordinal": n, "assignment_id": assignment_id, "hash": value,
             "position": start}
            for n, (value, start) in enumerate(zip(prints.hashes.tolist(), prints.starts.tolist(), strict=True))
        ]  # fmt: skip
        for start in range(0, len(rows), INSERT_BATCH):
            await session.execute(insert(FingerprintRow), rows[start : start + INSERT_BATCH])
