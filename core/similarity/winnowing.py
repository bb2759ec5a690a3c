"""Winnowing document fingerprints (Schleimer, Wilkerson, Aiken, SIGMOD 2003). Pure: no I/O.

Text is normalised first, so a copy that only changes case, spacing,
line breaks or punctuation still matches:

- case folded (``str.casefold``, so "Straße" and "STRASSE" agree);
- every run of whitespace becomes one space (re-wrapping a paragraph changes nothing);
- punctuation and symbols are dropped (letters and digits of every script are kept).

Every k-gram (``k`` consecutive normalised characters) is hashed with a
rolling Karp-Rabin hash; of every window of ``w`` consecutive k-gram hashes
the minimum is kept (robust winnowing: a tie keeps the previous pick, else the
rightmost minimum). Any substring two documents share whose normalised form
is at least ``t = w + k - 1`` characters long is guaranteed to produce a
shared fingerprint; matches shorter than ``k`` are ignored as noise.

Each fingerprint keeps its position, mapped back to character offsets in the
original text, so matched passages can be shown side by side.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

_MASK = (1 << 64) - 1
# An odd 64-bit multiplier: the rolling hash works modulo 2**64.
_BASE = 0x100000001B3


@dataclass(frozen=True)
class Normalised:
    text: str
    # origin[i] is the offset in the original text of normalised character i.
    origin: tuple[int, ...]


@dataclass(frozen=True)
class Fingerprint:
    hash: int  # signed 64-bit, fits a BIGINT column
    position: int  # index of the k-gram in the normalised text
    start: int  # character range of the k-gram in the original text
    end: int


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
    chars: list[str] = []
    origin: list[int] = []
    space_at = -1  # offset of a pending whitespace run, -1 when none
    for index, char in enumerate(text):
        if char.isspace():
            if chars and space_at < 0:  # no leading space; a run counts once
                space_at = index
            continue
        if not char.isalnum():
            continue  # punctuation is dropped without splitting words
        if space_at >= 0:
            chars.append(" ")
            origin.append(space_at)
            space_at = -1
        for folded in char.casefold():
            chars.append(folded)
            origin.append(index)
    return Normalised("".join(chars), tuple(origin))


def _mix(value: int) -> int:
    """splitmix64 finaliser: spreads the polynomial hash so window minima fall evenly."""
    value = (value ^ (value >> 30)) * 0xBF58476D1CE4E5B9 & _MASK
    value = (value ^ (value >> 27)) * 0x94D049BB133111EB & _MASK
    return value ^ (value >> 31)


def _signed(value: int) -> int:
    return value - (1 << 64) if value >= 1 << 63 else value


def kgram_hashes(text: str, k: int) -> list[int]:
    """The hash of every k-gram of ``text``, rolled in O(len(text))."""
    if k <= 0:
        raise ValueError("k must be positive")
    if len(text) < k:
        return []
    top = pow(_BASE, k - 1, 1 << 64)
    rolling = 0
    for char in text[:k]:
        rolling = (rolling * _BASE + ord(char)) & _MASK
    hashes = [_signed(_mix(rolling))]
    for i in range(k, len(text)):
        rolling = ((rolling - ord(text[i - k]) * top) * _BASE + ord(text[i])) & _MASK
        hashes.append(_signed(_mix(rolling)))
    return hashes


def winnow(hashes: list[int], window: int) -> list[tuple[int, int]]:
    """Robust winnowing: (hash, index) picked from every window of ``window`` hashes."""
    if window <= 0:
        raise ValueError("window must be positive")
    if not hashes:
        return []
    # A document shorter than one window still gets one fingerprint.
    window = min(window, len(hashes))
    picked: list[tuple[int, int]] = []
    current = -1
    for right in range(window - 1, len(hashes)):
        left = right - window + 1
        if current < left:
            # The previous pick left the window: take the rightmost minimum of this one.
            current = right
            for i in range(right - 1, left - 1, -1):
                if hashes[i] < hashes[current]:
                    current = i
            picked.append((hashes[current], current))
        elif hashes[right] < hashes[current]:
            current = right  # a strictly smaller hash replaces it; a tie keeps the old pick
            picked.append((hashes[current], current))
    return picked


def fingerprint(text: str, k: int, window: int) -> list[Fingerprint]:
    """The winnowed fingerprints of ``text``, with positions in the original text."""
    normal = normalise(text)
    hashes = kgram_hashes(normal.text, k)
    return [
        Fingerprint(value, position, normal.origin[position], normal.origin[position + k - 1] + 1)
        for value, position in winnow(hashes, window)
    ]


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
    found: Mapping[int, Iterable[int]],
    *,
    top: int = 5,
    max_spans: int = 5,
    span_gap: int = 0,
) -> Report:
    """Score a document against the others that share its hashes.

    ``found`` maps a fingerprint hash to the other documents holding it. The
    score is containment: the percent of this document's fingerprints found
    in any other document; each match gets its own percent and the longest
    passages it shares, as character ranges in this document.
    """
    total = len(fingerprints)
    if total == 0:
        return Report(0.0, 0, [])
    matched = 0
    per_other: dict[int, list[Fingerprint]] = {}
    for print_ in fingerprints:
        others = set(found.get(print_.hash, ()))
        if others:
            matched += 1
        for other in others:
            per_other.setdefault(other, []).append(print_)
    ranked = sorted(per_other.items(), key=lambda item: (-len(item[1]), item[0]))[:top]
    matches = []
    for other, prints in ranked:
        passages = merge_spans(((p.start, p.end) for p in prints), gap=span_gap)
        longest = sorted(passages, key=lambda span: span[0] - span[1])[:max_spans]
        matches.append(MatchSummary(other, len(prints), _percent(len(prints), total), sorted(longest)))
    return Report(_percent(matched, total), total, matches)


def _percent(part: int, whole: int) -> float:
    return round(100.0 * part / whole, 1)
