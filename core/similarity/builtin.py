"""The built-in provider: winnowing fingerprints checked against the assignment's index.

Compared against every other student's submission to the same assignment
that has been indexed so far; the student's own other attempts are left out.
A submission's fingerprints are committed to the index *before* it looks up
matches: of two copies checked at the same moment, at least the later
look-up sees the other, so a near-simultaneous pair is never both missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from core.similarity import index
from core.similarity.provider import NO_TEXT, CheckOutcome, CheckRequest
from core.similarity.text import TEXT_KINDS, UnreadableDocument, extract_text
from core.similarity.winnowing import Report, containment, fingerprint, guarantee_threshold

TOP_MATCHES = 5
SPANS_PER_MATCH = 5


class BuiltinProvider:
    name = "builtin"

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.k = settings.similarity.k
        self.window = settings.similarity.window
        self.sessions = sessions

    async def check(self, request: CheckRequest) -> CheckOutcome:
        from core.storage import Area

        submission = request.submission
        if submission.kind not in TEXT_KINDS:
            return skipped(NO_TEXT)
        try:
            async with readable_path(request.storage, Area.store, submission.storage_key) as path:
                text = await asyncio.to_thread(extract_text, path, submission.kind)
        except UnreadableDocument as error:
            return skipped(f"{NO_TEXT}: {error}")
        if text is None:
            return skipped(NO_TEXT)
        prints = await asyncio.to_thread(fingerprint, text, self.k, self.window)
        if not prints:
            return skipped(f"{NO_TEXT}: shorter than {self.k} characters")

        async with self.sessions() as session, session.begin():
            await index.replace(session, submission.assignment_id, submission.id, prints)
        async with self.sessions() as session:
            hits = await index.lookup(
                session, submission.assignment_id, (p.hash for p in prints), exclude_user_id=submission.user_id
            )
        # Passages closer than one k-gram are one copied passage with an edit inside.
        report = containment(prints, hits.holders, top=TOP_MATCHES, max_spans=SPANS_PER_MATCH, span_gap=self.k)
        return CheckOutcome("done", self.result(report, hits.owners))

    def result(self, report: Report, owners: dict[int, int]) -> dict[str, Any]:
        return {
            "provider": self.name,
            "score": report.score,
            "fingerprints": report.fingerprints,
            "guarantee_chars": guarantee_threshold(self.k, self.window),
            "matches": [
                {
                    "submission_id": match.other,
                    "user_id": owners.get(match.other),
                    "score": match.score,
                    "shared": match.shared,
                    "spans": [list(span) for span in match.spans],
                }
                for match in report.matches
            ],
        }

    async def close(self) -> None:
        return None


def skipped(reason: str) -> CheckOutcome:
    return CheckOutcome("skipped", {"reason": reason})


@contextlib.asynccontextmanager
async def readable_path(storage: Any, area: Any, key: str) -> AsyncIterator[Path]:
    """A local path to the stored file: the file itself, or a temporary copy streamed from S3."""
    path = await storage.local_path(area, key)
    if path is not None:
        yield path
        return
    handle, name = tempfile.mkstemp(prefix="handin-similarity-")
    try:
        with os.fdopen(handle, "wb") as out:
            async for chunk in storage.open(area, key):
                await asyncio.to_thread(out.write, chunk)
        yield Path(name)
    finally:
        os.unlink(name)
