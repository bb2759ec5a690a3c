"""Winnowing document fingerprints (Schleimer, Wilkerson, Aiken, SIGMOD 2003). Pure: no I/O.

Text is normalised first, so a copy that only changes case, spacing,
line breaks or punctuation still matches:

- case folded (``str.casefold``, so "Straße" and "STRASSE" agree);
- every run of whitespace becomes one space (re-wrapping a paragraph changes nothing);
- punctuation and symbols are dropped (letters and digits of every script are kept).

Every k-gram (``k`` consecutive normalised characters) is hashed with a
Karp-Rabin polynomial hash; of every window of ``w`` consecutive k-gram hashes
the minimum is kept (robust winnowing: a tie keeps the previous pick, else the
rightmost minimum). Any substring two documents share whose normalised form
is at least ``t = w + k - 1`` characters long is guaranteed to produce a
shared fingerprint; matches shorter than ``k`` are ignored as noise.

Each fingerprint keeps its position, mapped back to character offsets in the
original text, so matched passages can be shown side by side.

The work is numpy array operations over the whole text (numpy's uint64
arithmetic wraps modulo 2**64 exactly as the rolling hash does); Python looks
at each distinct character once and at each fingerprint once, never at each
k-gram. A 64 KB essay takes about a fifth of the time the per-k-gram loops took.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

# An odd 64-bit multiplier: the rolling hash works modulo 2**64.
_BASE = 0x100000001B3
_BASE_INVERSE = pow(_BASE, -1, 1 << 64)


@dataclass(frozen=True)
class Normalised:
    text: str
    # origin[i] is the offset in the original text of normalised character i.
    origin: tuple[int, ...]


class Fingerprint(NamedTuple):
    # A tuple, not a dataclass: a 64 KB text has thousands, built in one go.
    hash: int  # signed 64-bit, fits a BIGINT column
    position: int  # index of the k-gram in the normalised text
    start: int  # character range of the k-gram in the original text
    end: int


@dataclass(frozen=True)
class Fingerprints:
    """A text's fingerprints as columns (``Fingerprint``'s fields, one array each): a 64 KB text has
    thousands, which the index writes and the check scores as arrays, never one tuple at a time."""

    hashes: npt.NDArray[np.int64]
    positions: npt.NDArray[np.int64]
    starts: npt.NDArray[np.int64]
    ends: npt.NDArray[np.int64]

    @classmethod
    def of(cls, prints: Fingerprints | Sequence[Fingerprint]) -> Fingerprints:
        if isinstance(prints, Fingerprints):
            return prints
        if not prints:
            return cls(*(np.zeros(0, np.int64) for _ in Fingerprint._fields))
        return cls(*(np.array(column, dtype=np.int64) for column in zip(*prints, strict=True)))

    def __len__(self) -> int:
        return int(self.hashes.size)

    def where(self, keep: npt.NDArray[np.bool_]) -> Fingerprints:
        return Fingerprints(self.hashes[keep], self.positions[keep], self.starts[keep], self.ends[keep])

    def rows(self) -> list[Fingerprint]:
        columns = self.hashes.tolist(), self.positions.tolist(), self.starts.tolist(), self.ends.tolist()
        # Built from the columns' tuples by tuple.__new__ (_make), not field by field: a third less.
        return list(map(Fingerprint._make, zip(*columns, strict=True)))


@dataclass(frozen=True)
class MatchSummary:
    """How much of one document is found in another one."""

    other: int
    shared: int
    score: float
    spans: list[tuple[int, int]]


@dataclass(frozen=True)
class Report:
    score: float
    fingerprints: int
    matches: list[MatchSummary]


def guarantee_threshold(k: int, window: int) -> int:
    """Shortest shared (normalised) substring winnowing is certain to detect."""
    return window + k - 1


def window_for(threshold: int, k: int) -> int:
    """The window that gives the guarantee threshold ``threshold`` (w = t - k + 1)."""
    if threshold < k:
        raise ValueError("the guarantee threshold cannot be below the k-gram length")
    return threshold - k + 1


def normalise(text: str) -> Normalised:
    codes, origin = _normal_codes(text)
    return Normalised(_text_of(codes), tuple(origin.tolist()))


def _text_of(codes: npt.NDArray[np.uint32]) -> str:
    return codes.astype("<u4").tobytes().decode("utf-32-le", "surrogatepass")


class _Characters(NamedTuple):
    """What normalising does to each of some distinct characters, as arrays indexed like them."""

    kinds: npt.NDArray[np.int8]  # 1: letter or digit (kept), 2: whitespace (runs become one space), 0: dropped
    folds: list[str]  # casefolded, one or more characters each
    fold_lengths: npt.NDArray[np.int64]
    single_folds: npt.NDArray[np.uint32]  # the first character each folds to
    several: npt.NDArray[np.intp]  # which ones fold to more than one ("ß" → "ss")


def _characters(chars: list[str]) -> _Characters:
    folds = [c.casefold() for c in chars]
    fold_lengths = np.array([len(f) for f in folds], dtype=np.int64)
    return _Characters(
        np.array([1 if c.isalnum() else 2 if c.isspace() else 0 for c in chars], dtype=np.int8),
        folds,
        fold_lengths,
        np.array([ord(f[0]) for f in folds], dtype=np.uint32),
        np.flatnonzero(fold_lengths > 1),
    )


# Latin-1 text (most of it) indexes fixed tables: built once, not per text.
_LATIN1 = _characters([chr(code) for code in range(256)])


def _normal_codes(text: str) -> tuple[npt.NDArray[np.uint32], npt.NDArray[np.int64]]:
    """The normalised text as code points, and each one's offset in ``text``.

    Array operations over the whole text; Python looks only at each *distinct*
    character once (is it a letter or digit, a space, what does it fold to),
    never at each character of the text.
    """
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    if codes.size == 0:
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    if int(codes.max()) < 256:
        which = codes.astype(np.int64)
        chars = _LATIN1
    else:
        distinct, which = np.unique(codes, return_inverse=True)
        chars = _characters([chr(code) for code in distinct.tolist()])
    kinds = chars.kinds[which]
    kept = np.flatnonzero(kinds)
    space = kinds[kept] == 2
    alnum = ~space
    if not alnum.any():
        return np.zeros(0, np.uint32), np.zeros(0, np.int64)
    # A whitespace run (punctuation inside it is dropped) is one space where it starts,
    # and only between words: none leading, none trailing.
    starts_run = space & ~np.concatenate(([False], space[:-1]))
    starts_run[: int(alnum.argmax())] = False
    starts_run[alnum.size - int(alnum[::-1].argmax()) :] = False
    emitted = alnum | starts_run
    positions = kept[emitted]
    is_space = space[emitted]
    distinct_of = which[positions]
    if not np.isin(distinct_of, chars.several).any():
        # Every character folds to one: the common case, a plain gather.
        folded = chars.single_folds[distinct_of]
        folded[is_space] = 32
        return folded, positions
    lengths = chars.fold_lengths[distinct_of]
    lengths[is_space] = 1
    # Some fold to several ("ß" → "ss"): each keeps its origin for every character it became.
    table = np.frombuffer("".join(chars.folds).encode("utf-32-le", "surrogatepass"), dtype="<u4")
    offsets = np.concatenate(([0], np.cumsum(chars.fold_lengths)[:-1])).astype(np.int64)[distinct_of]
    out_starts = np.cumsum(lengths) - lengths
    gather = np.repeat(offsets - out_starts, lengths) + np.arange(int(lengths.sum()))
    folded = table[gather].astype(np.uint32)
    folded[np.repeat(is_space, lengths)] = 32
    return folded, np.repeat(positions, lengths)


def _kgram_hashes(codes: npt.NDArray[np.uint32], k: int) -> npt.NDArray[np.int64]:
    """The (mixed, signed) Karp-Rabin hash of every k-gram, from prefix sums: a few vector passes
    whatever k is, instead of a loop per k-gram or a pass per character of the k-gram.

    The same value the rolling hash gives: sum of code[i + j] * BASE**(k - 1 - j)
    modulo 2**64 (numpy's uint64 arithmetic wraps exactly there). BASE is odd, so it has an
    inverse modulo 2**64: with prefix[n] = sum of code[t] * BASE**-t for t < n, the hash of the
    k-gram at i is (prefix[i + k] - prefix[i]) * BASE**(i + k - 1).
    """
    if k <= 0:
        raise ValueError("k must be positive")
    count = codes.size - k + 1
    if count <= 0:
        return np.zeros(0, np.int64)
    powers, inverse_powers = _powers(codes.size)
    prefix = np.zeros(codes.size + 1, np.uint64)
    np.cumsum(codes.astype(np.uint64) * inverse_powers, out=prefix[1:])
    value = (prefix[k:] - prefix[:count]) * powers[k - 1 :]
    # splitmix64 finaliser: spreads the polynomial hash so window minima fall evenly.
    value ^= value >> np.uint64(30)
    value *= np.uint64(0xBF58476D1CE4E5B9)
    value ^= value >> np.uint64(27)
    value *= np.uint64(0x94D049BB133111EB)
    value ^= value >> np.uint64(31)
    return value.view(np.int64)


# BASE**i and BASE**-i modulo 2**64 for i < len: the same for every text, so computed once and
# extended when a longer text comes (replaced whole: threads checking texts at once may read it).
_power_tables: tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]] = (np.ones(1, np.uint64), np.ones(1, np.uint64))


def _powers(size: int) -> tuple[npt.NDArray[np.uint64], npt.NDArray[np.uint64]]:
    global _power_tables
    powers, inverse_powers = _power_tables
    if powers.size < size:
        length = max(size, 2 * powers.size)
        powers, inverse_powers = np.full(length, _BASE, np.uint64), np.full(length, _BASE_INVERSE, np.uint64)
        powers[0] = inverse_powers[0] = 1
        np.cumprod(powers, out=powers)
        np.cumprod(inverse_powers, out=inverse_powers)
        _power_tables = (powers, inverse_powers)
    return powers[:size], inverse_powers[:size]


def kgram_hashes(text: str, k: int) -> list[int]:
    """The hash of every k-gram of ``text`` (as signed 64-bit integers)."""
    codes = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype="<u4")
    return [int(value) for value in _kgram_hashes(codes, k).tolist()]


def _winnow(hashes: npt.NDArray[np.int64], window: int) -> npt.NDArray[np.int64]:
    """Positions robust winnowing picks, in order: the minimum of every window of
    ``window`` hashes, the rightmost on a tie unless the previous pick is one of them.

    A position is picked when it is the minimum of some window holding it: when its hash
    equals the largest of the minima of the windows that hold it. Both are sliding extremes,
    array operations by doubling (passes grow with log2(window), not window). That is exact
    when no window holds its minimum twice; a text that repeats a k-gram within a window
    (rare in prose) is settled by ``_winnow_ties``, which follows the tie rule.
    """
    if window <= 0:
        raise ValueError("window must be positive")
    count = hashes.size
    if count == 0:
        return np.zeros(0, np.int64)
    window = min(window, count)
    minima = _sliding(hashes, window, np.minimum)
    # Padding that never wins: every position lies in at least one window.
    floor = np.full(window - 1, np.iinfo(np.int64).min, np.int64)
    reach = _sliding(np.concatenate((floor, minima, floor)), window, np.maximum)
    picked = np.flatnonzero(hashes == reach)
    values = hashes[picked]
    if bool(((values[1:] == values[:-1]) & (np.diff(picked) < window)).any()):
        return _winnow_ties(hashes, window)
    return picked


def _sliding(values: npt.NDArray[np.int64], window: int, pick: np.ufunc) -> npt.NDArray[np.int64]:
    """``pick`` (np.minimum or np.maximum) of every ``window`` consecutive values, by doubling."""
    out, span = values, 1
    while span * 2 <= window:
        out = pick(out[: out.size - span], out[span:])
        span *= 2
    size = values.size - window + 1
    # Each window is two spans of ``span`` values, overlapping where window < 2 * span.
    result: npt.NDArray[np.int64] = pick(out[:size], out[window - span : window - span + size])
    return result


def _winnow_ties(hashes: npt.NDArray[np.int64], window: int) -> npt.NDArray[np.int64]:
    """``_winnow`` where some window holds its minimum twice: each window's minimum with its
    leftmost and rightmost place (by doubling), the tied windows settled one by one."""
    count = hashes.size
    windows = count - window + 1
    minima = hashes
    rightmost = leftmost = np.arange(count, dtype=np.int64)
    span = 1
    while span * 2 <= window:
        minima, rightmost, leftmost = _combine(minima, rightmost, leftmost, span, minima.size - span)
        span *= 2
    minima, rightmost, leftmost = _combine(minima, rightmost, leftmost, window - span, windows)
    chosen = rightmost.copy()
    tied = np.flatnonzero(leftmost != rightmost)
    for index in tied.tolist():
        if index == 0:
            continue
        previous = int(chosen[index - 1])
        if previous >= index and hashes[previous] == minima[index]:
            chosen[index] = previous
    changed = np.concatenate(([True], chosen[1:] != chosen[:-1]))
    return chosen[changed]


def _combine(
    minima: npt.NDArray[np.int64],
    rightmost: npt.NDArray[np.int64],
    leftmost: npt.NDArray[np.int64],
    shift: int,
    size: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Span i joined with span i + shift (they may overlap): the smaller minimum, the rightmost
    place of it (the right span's on a tie: it reaches further) and the leftmost (the left span's)."""
    left, right = minima[:size], minima[shift : shift + size]
    right_wins = right <= left
    return (
        np.minimum(left, right),
        np.where(right_wins, rightmost[shift : shift + size], rightmost[:size]),
        np.where(right < left, leftmost[shift : shift + size], leftmost[:size]),
    )


def winnow(hashes: list[int], window: int) -> list[tuple[int, int]]:
    """Robust winnowing: (hash, index) picked from every window of ``window`` hashes."""
    array = np.asarray(hashes, dtype=np.int64)
    picked = _winnow(array, window)
    return list(zip(array[picked].tolist(), picked.tolist(), strict=True))


def fingerprint(text: str, k: int, window: int) -> list[Fingerprint]:
    """The winnowed fingerprints of ``text``, with positions in the original text."""
    return fingerprint_columns(text, k, window).rows()


def fingerprint_columns(text: str, k: int, window: int) -> Fingerprints:
    """``fingerprint`` as columns."""
    origin, hashes = kgrams(text, k)
    picked = _winnow(hashes, window)
    if picked.size == 0:
        return Fingerprints.of([])
    return Fingerprints(hashes[picked], picked, origin[picked], origin[picked + k - 1] + 1)


def kgrams(text: str, k: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Each normalised character's offset in ``text``, and the hash of the k-gram starting there."""
    codes, origin = _normal_codes(text)
    return origin, _kgram_hashes(codes, k)


def merge_spans(ranges: Iterable[tuple[int, int]], gap: int = 0) -> list[tuple[int, int]]:
    """Overlapping (or nearly touching) character ranges merged into passages."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1] + gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def containment(
    fingerprints: list[Fingerprint],
    held_by: Mapping[int, Collection[int]],
    *,
    top: int = 5,
    max_spans: int = 5,
    span_gap: int = 0,
) -> Report:
    """Score a document against the others that share its hashes.

    ``held_by`` maps each other document to the hashes it holds. The score is containment:
    the percent of this document's fingerprints found in any other document; each match
    gets its own percent and the longest passages it shares, as character ranges in this
    document.
    """
    holders = np.fromiter(chain.from_iterable([other] * len(hashes) for other, hashes in held_by.items()), np.int64)
    hashes = np.fromiter(chain.from_iterable(held_by.values()), np.int64)
    return containment_in(fingerprints, holders, hashes, top=top, max_spans=max_spans, span_gap=span_gap)


def containment_in(
    fingerprints: Fingerprints | Sequence[Fingerprint],
    holders: npt.NDArray[np.int64],
    hashes: npt.NDArray[np.int64],
    *,
    top: int = 5,
    max_spans: int = 5,
    span_gap: int = 0,
) -> Report:
    """``containment`` with what the others hold as two arrays: document ``holders[i]`` holds
    ``hashes[i]`` (in any order, repeats allowed), as the index's look-up answers them.

    Array operations over the hits, however many documents share a common phrase or two; Python
    looks only at the ``top`` matches.
    """
    prints = Fingerprints.of(fingerprints)
    total = len(prints)
    if total == 0:
        return Report(0.0, 0, [])
    own = prints.hashes
    values, multiplicity = np.unique(own, return_counts=True)
    at = np.minimum(np.searchsorted(values, hashes), values.size - 1)
    ours = values[at] == hashes
    # Each (document, hash) once, sorted by document.
    pair_holders, pair_at = holders[ours], at[ours]
    order = np.lexsort((pair_at, pair_holders))
    pair_holders, pair_at = pair_holders[order], pair_at[order]
    first = np.ones(pair_at.size, dtype=bool)
    first[1:] = (pair_holders[1:] != pair_holders[:-1]) | (pair_at[1:] != pair_at[:-1])
    pair_holders, pair_at = pair_holders[first], pair_at[first]
    matched = int(multiplicity[np.unique(pair_at)].sum())
    others, which = np.unique(pair_holders, return_inverse=True)
    # Each document's share: every one of this document's fingerprints whose hash it holds.
    shared = np.bincount(which, weights=multiplicity[pair_at], minlength=others.size).astype(np.int64)
    matches = []
    for rank in np.lexsort((others, -shared))[:top].tolist():
        chosen = np.flatnonzero(np.isin(own, values[pair_at[which == rank]]))
        spans = zip(prints.starts[chosen].tolist(), prints.ends[chosen].tolist(), strict=True)
        passages = merge_spans(spans, gap=span_gap)
        longest = sorted(passages, key=lambda span: span[0] - span[1])[:max_spans]
        count = int(shared[rank])
        matches.append(MatchSummary(int(others[rank]), count, _percent(count, total), sorted(longest)))
    return Report(_percent(matched, total), total, matches)


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1)
