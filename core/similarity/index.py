"""The inverted fingerprint index in the database: (assignment, hash) → submission, position.

A check looks up only its own hashes (``WHERE assignment_id = ? AND hash IN
(...)``, in batches, served by ``ix_fingerprints_lookup``), so its cost grows
with its own fingerprints and the matches found, not with how many
submissions the assignment already has.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncSession

from core.models import Fingerprint as FingerprintRow
from core.models import Submission
from core.similarity.winnowing import Fingerprint

# Bind parameters per IN list: well inside SQLite's and asyncpg's limits.
LOOKUP_BATCH = 500
INSERT_BATCH = 2000


@dataclass
class Hits:
    """Which other submissions hold each looked-up hash, and whose they are."""

    holders: dict[int, set[int]] = field(default_factory=dict)
    owners: dict[int, int] = field(default_factory=dict)


async def lookup(
    session: AsyncSession, assignment_id: int, hashes: Iterable[int], *, exclude_user_id: int
) -> Hits:
    """Other students' submissions to this assignment that share any of ``hashes``.

    The same student's own attempts are left out: a resubmission that reuses
    the student's earlier draft is not copying.
    """
    unique = sorted(set(hashes))
    hits = Hits()
    for start in range(0, len(unique), LOOKUP_BATCH):
        batch = unique[start : start + LOOKUP_BATCH]
        rows = await session.execute(
            select(FingerprintRow.hash, FingerprintRow.submission_id, Submission.user_id)
            .join(Submission, Submission.id == FingerprintRow.submission_id)
            .where(
                FingerprintRow.assignment_id == assignment_id,
                FingerprintRow.hash.in_(batch),
                Submission.user_id != exclude_user_id,
            )
        )
        for value, submission_id, user_id in rows:
            hits.holders.setdefault(value, set()).add(submission_id)
            hits.owners[submission_id] = user_id
    return hits


async def replace(
    session: AsyncSession, assignment_id: int, submission_id: int, fingerprints: Sequence[Fingerprint]
) -> None:
    """Index a submission's fingerprints; a re-run replaces its earlier rows."""
    await session.execute(delete(FingerprintRow).where(FingerprintRow.submission_id == submission_id))
    rows = [
        {"assignment_id": assignment_id, "hash": fp.hash, "submission_id": submission_id, "position": fp.start}
        for fp in fingerprints
    ]
    for start in range(0, len(rows), INSERT_BATCH):
        await session.execute(insert(FingerprintRow), rows[start : start + INSERT_BATCH])
