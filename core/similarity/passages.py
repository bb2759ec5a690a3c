"""Matched passages: where two texts share wording, as pairs of character ranges, one in each.

The index says *that* two submissions share fingerprints; staff need to read *what* they share,
side by side. ``aligned_passages`` finds it from both extracted texts: every k-gram (normalised as
for winnowing, so re-cased, re-wrapped or re-punctuated copies still line up) that occurs in both,
chained along diagonals (k-gram i of one text and j of the other, then i+1 and j+1, …) into runs;
the longest runs that do not overlap are kept, runs a small edit apart are joined into one passage,
and each is mapped back to offsets in the original texts. All k-grams, not only the winnowed
fingerprints, so a passage's ends are exact rather than rounded to the nearest fingerprint.
``passages_near`` does the same only around the fingerprints the index says both texts hold,
which is what the similarity worker runs.

The similarity worker stores the result in each match as ``passages``:
``[[start, end, other_start, other_end], …]`` (``[start, end)`` in this submission's extracted text,
the others in the matching submission's), ordered by position in this submission.

``excerpt`` cuts a passage and its context out of a text for the staff page. This module is
imported by the api, which carries no numpy: ``aligned_passages`` imports the winnowing code when
it runs, in the worker.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

# Passages shown per match, longest first.
MAX_PASSAGES = 10
# A repeated k-gram is paired with at most this many places in the other text (boilerplate repeats).
MAX_PLACES_PER_KGRAM = 8
CONTEXT_CHARS = 160
# A matched passage longer than this is shown as its head and tail with the middle elided.
MAX_SHOWN_CHARS = 2400


def text_key(storage_key: str) -> str:
    """Where a submission's extracted text is kept (beside its file in the store), UTF-8."""
    return f"{storage_key}.txt"


def encode_text(text: str) -> bytes:
    # surrogatepass both ways: a PDF's text layer may hold a lone surrogate, and offsets must not move.
    return text.encode("utf-8", "surrogatepass")


def decode_kept_text(data: bytes) -> str:
    return data.decode("utf-8", "surrogatepass")


class Passage(NamedTuple):
    start: int
    end: int
    other_start: int
    other_end: int


@dataclass(frozen=True)
class _Run:
    mine: int  # first k-gram index in this text
    other: int  # first k-gram index in the other text
    length: int  # k-grams in the run, in this text
    other_length: int  # and in the other text (they differ once runs an edit apart are joined)


class PreparedText(NamedTuple):
    """A text's k-grams, computed once when it is aligned with several others."""

    text: str
    origin: Any  # numpy array: normalised position -> offset in ``text``
    hashes: Any  # numpy array: k-gram hash per normalised position
    sorted_hashes: Any  # for exact membership by binary search
    table: Any  # flags by the low bits of each hash: a cheap first filter (see _table)


def prepare(text: str, k: int) -> PreparedText:
    import numpy as np

    from core.similarity import winnowing

    origin, hashes = winnowing.kgrams(text, k)
    return PreparedText(text, origin, hashes, np.sort(hashes), _table(hashes))


def aligned_passages(
    mine: str | PreparedText, other: str, k: int, *, limit: int = MAX_PASSAGES, gap: int | None = None
) -> list[Passage]:
    """The passages ``mine`` shares with ``other``, aligned; ``gap`` (normalised characters, k by default)
    joins runs an edit apart. ``mine`` may come prepared (``prepare``, same ``k``) when it is paired
    with several texts."""
    import numpy as np

    from core.similarity import winnowing

    a = mine if isinstance(mine, PreparedText) else prepare(mine, k)
    origin_b, hashes_b = winnowing.kgrams(other, k)
    # Python looks only at k-grams found in both texts: the copied part, not the whole essay.
    shared_b = _positions_in(hashes_b, a.sorted_hashes, a.table)
    both = np.unique(hashes_b[shared_b])
    shared_a = _positions_in(a.hashes, both, _table(both))
    runs = _diagonal_runs(shared_a, a.hashes[shared_a], shared_b, hashes_b[shared_b])
    chosen = _non_overlapping(runs, limit * 4)
    joined = _join(chosen, k, k if gap is None else gap)
    joined.sort(key=lambda run: -run.length)
    passages = [
        Passage(
            *_trimmed(a.text, int(a.origin[run.mine]), int(a.origin[run.mine + run.length + k - 2]) + 1),
            *_trimmed(other, int(origin_b[run.other]), int(origin_b[run.other + run.other_length + k - 2]) + 1),
        )
        for run in joined[:limit]
    ]
    return sorted(passages)


def passages_near(
    mine: str, other: str, pairs: Iterable[tuple[int, int]], k: int, *, margin: int, limit: int = MAX_PASSAGES
) -> list[Passage]:
    """``aligned_passages`` where the index says two texts share fingerprints, not over the whole texts.

    ``pairs``: (offset here, offset there) of each fingerprint both hold. Around each, ``margin``
    characters either way are kept; overlapping stretches merge, so a long copied passage (its
    fingerprints at most a window apart) is one stretch. Any shared passage long enough to be
    certain of a fingerprint lies within ``margin`` of one when ``margin`` is at least the
    guarantee threshold and a k-gram in original characters. Each text's stretches are aligned in
    one go, joined by separators that cannot match (digits of a different kind on either side, a
    k-gram long). The cost follows what is shared, not the texts' length: most matches are a few
    common phrases, and each used to pair two whole essays.
    """
    pairs = list(pairs)
    if not pairs:
        return []
    mine_joined = _Stretches(mine, (here for here, _ in pairs), margin, " " + "0" * k + " ")
    other_joined = _Stretches(other, (there for _, there in pairs), margin, " " + "1" * k + " ")
    found: list[Passage] = []
    for passage in aligned_passages(mine_joined.text, other_joined.text, k, limit=limit * 2):
        here, there = (
            mine_joined.original(passage.start, passage.end),
            other_joined.original(passage.other_start, passage.other_end),
        )
        if here is not None and there is not None:
            found.append(Passage(*here, *there))
    # The longest first, none overlapping a longer one in either text (as aligned_passages keeps them).
    kept: list[Passage] = []
    for passage in sorted(found, key=lambda passage: (passage.start - passage.end, passage)):
        if len(kept) < limit and not any(_passages_overlap(passage, other) for other in kept):
            kept.append(passage)
    return sorted(kept)


class _Stretches:
    """The stretches of a text around some offsets, joined into one text, and the way back."""

    def __init__(self, text: str, offsets: Iterable[int], margin: int, separator: str) -> None:
        spans: list[tuple[int, int]] = []
        for start, end in sorted((max(0, at - margin), min(len(text), at + margin)) for at in offsets):
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(spans[-1][1], end))
            else:
                spans.append((start, end))
        pieces: list[str] = []
        self.joined_starts: list[int] = []
        self.spans = spans
        at = 0
        for start, end in spans:
            self.joined_starts.append(at)
            pieces.append(text[start:end])
            at += end - start + len(separator)
        self.text = separator.join(pieces)

    def original(self, start: int, end: int) -> tuple[int, int] | None:
        """Offsets in the text of a range of the joined text, clipped to its stretch (None: in a separator)."""
        index = bisect.bisect_right(self.joined_starts, start) - 1
        span_start, span_end = self.spans[index]
        joined_start = self.joined_starts[index]
        begin = span_start + start - joined_start
        finish = min(span_end, span_start + end - joined_start)
        return (begin, finish) if begin < finish else None


def _passages_overlap(a: Passage, b: Passage) -> bool:
    return (a.start < b.end and b.start < a.end) or (a.other_start < b.other_end and b.other_start < a.other_end)


def _table(values: Any) -> Any:
    """Flags indexed by the low bits of ``values``, about sixteen slots per value (a 64 KB text's
    ~65,000 k-grams: 2**20 flags, 1 MB), so about one probe in sixteen passes it by chance."""
    import numpy as np

    bits = max(10, (len(values) * 16).bit_length())
    table = np.zeros(1 << bits, dtype=bool)
    table[values & ((1 << bits) - 1)] = True
    return table


def _positions_in(hashes: Any, sorted_values: Any, table: Any) -> Any:
    """Positions, in order, of ``hashes`` that occur in ``sorted_values`` (whose ``_table`` is ``table``).

    The table rules out most at one memory read each; a binary search confirms the few left.
    numpy's isin sorted both arrays on every call: four fifths of a pairing's time."""
    import numpy as np

    candidates = np.flatnonzero(table[hashes & (len(table) - 1)])
    values = hashes[candidates]
    if len(sorted_values) == 0:
        return candidates[:0]
    places = np.minimum(np.searchsorted(sorted_values, values), len(sorted_values) - 1)
    return candidates[sorted_values[places] == values]


def _trimmed(text: str, start: int, end: int) -> tuple[int, int]:
    """Without the spaces at either end (a run may begin on the space between two words)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


class _Runs(NamedTuple):
    """Runs as arrays (there are thousands between two long texts; few are kept)."""

    mine: Any
    other: Any
    length: Any


def _diagonal_runs(positions_a: Any, hashes_a: Any, positions_b: Any, hashes_b: Any) -> _Runs:
    """Maximal runs of k-grams equal in both texts at a constant offset (a diagonal), from each text's
    shared k-grams (positions in order, and their hashes). A hash is paired with its first
    MAX_PLACES_PER_KGRAM places in the other text. Array operations: no Python per k-gram."""
    import numpy as np

    positions_a, positions_b = np.asarray(positions_a, np.int64), np.asarray(positions_b, np.int64)
    hashes_a, hashes_b = np.asarray(hashes_a, np.int64), np.asarray(hashes_b, np.int64)
    # The other text's places by hash, in order of position within a hash, at most the cap each.
    by_hash = np.argsort(hashes_b, kind="stable")
    places_hash, places = hashes_b[by_hash], positions_b[by_hash]
    rank = np.arange(places_hash.size) - np.searchsorted(places_hash, places_hash, side="left")
    places_hash, places = places_hash[rank < MAX_PLACES_PER_KGRAM], places[rank < MAX_PLACES_PER_KGRAM]
    # Every (k-gram here, place there) pair with equal hashes.
    first = np.searchsorted(places_hash, hashes_a, side="left")
    count = np.searchsorted(places_hash, hashes_a, side="right") - first
    mine = np.repeat(positions_a, count)
    within = np.arange(mine.size) - np.repeat(np.cumsum(count) - count, count)
    diagonal = places[np.repeat(first, count) + within] - mine
    # Along each diagonal, a run is a stretch of consecutive positions.
    order = np.lexsort((mine, diagonal))
    mine, diagonal = mine[order], diagonal[order]
    if mine.size == 0:
        return _Runs(mine, mine, mine)
    starts = np.flatnonzero(np.concatenate(([True], (diagonal[1:] != diagonal[:-1]) | (mine[1:] != mine[:-1] + 1))))
    ends = np.append(starts[1:], mine.size) - 1
    return _Runs(mine[starts], mine[starts] + diagonal[starts], mine[ends] - mine[starts] + 1)


def _non_overlapping(runs: _Runs, limit: int) -> list[_Run]:
    """The longest runs, each overlapping no longer one kept before it in either text."""
    import numpy as np

    kept: list[_Run] = []
    for index in np.lexsort((runs.other, runs.mine, -runs.length)).tolist():
        if len(kept) >= limit:
            break
        length = int(runs.length[index])
        run = _Run(int(runs.mine[index]), int(runs.other[index]), length, length)
        if any(_overlaps(run, other) for other in kept):
            continue
        kept.append(run)
    return kept


def _overlaps(a: _Run, b: _Run) -> bool:
    return (a.mine < b.mine + b.length and b.mine < a.mine + a.length) or (
        a.other < b.other + b.other_length and b.other < a.other + a.other_length
    )


def _join(runs: list[_Run], k: int, gap: int) -> list[_Run]:
    """Runs in order in both texts with at most ``gap`` characters between them become one passage
    (a copied paragraph with a word changed inside is one passage, not two)."""
    joined: list[_Run] = []
    for run in sorted(runs, key=lambda r: r.mine):
        if joined:
            last = joined[-1]
            # Characters between the end of the last run's final k-gram and the start of this one.
            between_mine = run.mine - (last.mine + last.length + k - 1)
            between_other = run.other - (last.other + last.other_length + k - 1)
            if run.other > last.other and between_mine <= gap and between_other <= gap:
                joined[-1] = _Run(
                    last.mine, last.other, run.mine + run.length - last.mine, run.other + run.other_length - last.other
                )
                continue
        joined.append(run)
    return joined


@dataclass(frozen=True)
class Excerpt:
    """One side of a passage as the page shows it: context, the matched text, context."""

    before: str
    match: str
    after: str
    elided_before: bool  # the text goes on before ``before``
    elided_after: bool
    start: int
    end: int


def excerpt(text: str, start: int, end: int, context: int = CONTEXT_CHARS, max_chars: int = MAX_SHOWN_CHARS) -> Excerpt:
    """``text[start:end]`` with up to ``context`` characters either side, cut at a space where one is near."""
    start, end = max(0, min(start, len(text))), max(0, min(end, len(text)))
    lead = max(0, start - context)
    if lead > 0 and (space := text.find(" ", lead, start)) != -1:
        lead = space + 1
    tail = min(len(text), end + context)
    if tail < len(text) and (space := text.rfind(" ", end, tail)) != -1:
        tail = space
    matched = text[start:end]
    if len(matched) > max_chars:
        half = max_chars // 2
        matched = f"{matched[:half]} … {matched[-half:]}"
    return Excerpt(text[lead:start], matched, text[end:tail], lead > 0, tail < len(text), start, end)
