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

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.settings import Settings
from core.similarity import index
from core.similarity.passages import decode_kept_text, encode_text, passages_near, text_key
from core.similarity.provider import NO_TEXT, CheckOutcome, CheckRequest
from core.similarity.text import MAX_TEXT_CHARS, TEXT_KINDS, UnreadableDocument, extract_text
from core.similarity.winnowing import Fingerprints, Report, containment_in, fingerprint_columns, guarantee_threshold
from core.storage import ObjectMissing

TOP_MATCHES = 5
SPANS_PER_MATCH = 5


class BuiltinProvider:
    name = "builtin"

    def __init__(self, settings: Settings, sessions: async_sessionmaker[AsyncSession]) -> None:
        self.k = settings.similarity.k
        self.window = settings.similarity.window
        self.boilerplate_holders = settings.similarity.boilerplate_holders
        # Around each shared fingerprint, how far matched passages are aligned: a passage certain of a
        # fingerprint reaches at most the threshold and one k-gram past it (normalised characters);
        # twice that in the original text leaves room for the punctuation and spacing normalising drops.
        self.margin = 2 * (guarantee_threshold(self.k, self.window) + self.k)
        self.sessions = sessions

    async def check(self, request: CheckRequest) -> CheckOutcome:
        from core.storage import Area

        submission = request.submission
        if submission.kind not in TEXT_KINDS:
            return skipped(NO_TEXT)
        try:
            async with readable_path(request.storage, Area.store, submission.storage_key) as path:
                text, prints = await asyncio.to_thread(self.text_and_prints, path, submission.kind)
        except UnreadableDocument as error:
            return skipped(f"{NO_TEXT}: {error}")
        if text is None:
            return skipped(NO_TEXT)
        if not len(prints):
            return skipped(f"{NO_TEXT}: shorter than {self.k} characters")
        # Kept for matched passages: later checks pair their text with it, the staff page shows it.
        await request.storage.put_bytes(Area.store, text_key(submission.storage_key), encode_text(text))

        # On PostgreSQL the replacement is one statement and the look-up needs no snapshot of its own:
        # each runs as its own transaction, without BEGIN and COMMIT round trips.
        await index.replace(self.sessions, submission.assignment_id, submission.id, prints)
        hits = await index.lookup(
            self.sessions,
            submission.assignment_id,
            prints.hashes,
            submission_id=submission.id,
            exclude_user_id=submission.user_id,
            max_holders=self.boilerplate_holders,
        )
        # The score is over the student's own text: what half the class shares (the question) is left out.
        boilerplate = np.fromiter(hits.boilerplate, np.int64, len(hits.boilerplate))
        own = prints.where(~np.isin(prints.hashes, boilerplate))
        # Passages closer than one k-gram are one copied passage with an edit inside.
        report = containment_in(
            own, hits.submissions, hits.hashes, top=TOP_MATCHES, max_spans=SPANS_PER_MATCH, span_gap=self.k
        )
        result = self.result(report, hits.owners)
        result["boilerplate_fingerprints"] = len(prints) - len(own)
        places = shared_places(own, hits, [match["submission_id"] for match in result["matches"]])
        others: dict[int, str] = {}  # each match's text, by submission
        for match in result["matches"]:
            other = await self.other_text(request.storage, hits.files.get(match["submission_id"]))
            if other is not None:
                others[match["submission_id"]] = other
        found = await asyncio.to_thread(self.passages_with, text, others, places)
        for match in result["matches"]:
            if match["submission_id"] in found:
                match["passages"] = found[match["submission_id"]]
        return CheckOutcome("done", result)

    def text_and_prints(self, path: Path, kind: str) -> tuple[str | None, Fingerprints]:
        """The file's text and its fingerprints: one thread hop, not two."""
        text = extract_text(path, kind)
        return text, fingerprint_columns(text or "", self.k, self.window)

    def passages_with(
        self, text: str, others: dict[int, str], places: dict[int, list[tuple[int, int]]]
    ) -> dict[int, list[list[int]]]:
        """The passages ``text`` shares with each of ``others`` (by submission), in one thread hop."""
        return {
            other_id: [
                list(passage) for passage in passages_near(text, other, places[other_id], self.k, margin=self.margin)
            ]
            for other_id, other in others.items()
        }

    async def other_text(self, storage: Any, other: index.StoredFile | None) -> str | None:
        """The extracted text of an earlier submission: as its check kept it, else read from its file again."""
        from core.storage import Area

        if other is None:  # deleted meanwhile
            return None
        # Read without asking first: on S3 that is a request fewer per match.
        with contextlib.suppress(ObjectMissing):  # checked before texts were kept: extracted again
            kept = await storage.read_prefix(Area.store, text_key(other.storage_key), MAX_TEXT_CHARS * 4)
            return decode_kept_text(kept)
        try:
            async with readable_path(storage, Area.store, other.storage_key) as path:
                return await asyncio.to_thread(extract_text, path, other.kind)
        except (UnreadableDocument, ObjectMissing, FileNotFoundError):
            return None

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


def shared_places(own: Fingerprints, hits: index.Hits, others: list[int]) -> dict[int, list[tuple[int, int]]]:
    """For each of ``others``: (offset here, offset there) of every fingerprint this text shares with it."""
    places = {other: hits.places_of(other) for other in others}
    wanted = {value for held in places.values() for value in held}
    starts: dict[int, list[int]] = {}
    for value, start in zip(own.hashes.tolist(), own.starts.tolist(), strict=True):
        if value in wanted:
            starts.setdefault(value, []).append(start)
    return {
        other: [(here, there) for value, theres in held.items() for here in starts.get(value, ()) for there in theres]
        for other, held in places.items()
    }


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
