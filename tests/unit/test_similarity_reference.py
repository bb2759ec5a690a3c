"""The array implementations of winnowing and passage alignment against plain loops that follow
the definitions one step at a time (the loops are the specification; the arrays are what ships)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.similarity.passages import MAX_PLACES_PER_KGRAM, _diagonal_runs, _non_overlapping, _Run, _Runs
from core.similarity.winnowing import _winnow, kgram_hashes, normalise


def robust_winnowing(hashes: list[int], window: int) -> list[int]:
    """Schleimer et al. 2003, robust winnowing: per window the minimum; on a tie the previous pick
    if it is still in the window, else the rightmost minimum. Positions, each once, in order."""
    window = min(window, len(hashes))
    picks: list[int] = []
    for left in range(len(hashes) - window + 1):
        inside = hashes[left : left + window]
        smallest = min(inside)
        if picks and picks[-1] >= left and hashes[picks[-1]] == smallest:
            continue
        rightmost = left + max(i for i, value in enumerate(inside) if value == smallest)
        if not picks or picks[-1] != rightmost:
            picks.append(rightmost)
    return picks


def normalised_by_loop(text: str) -> tuple[str, tuple[int, ...]]:
    """Case folded, punctuation dropped, each whitespace run between words one space (at the run's
    first character); each normalised character with the offset of the character it came from."""
    out: list[str] = []
    origin: list[int] = []
    space_at: int | None = None
    for offset, char in enumerate(text):
        if char.isalnum():
            if space_at is not None and out:
                out.append(" ")
                origin.append(space_at)
            space_at = None
            for folded in char.casefold():
                out.append(folded)
                origin.append(offset)
        elif char.isspace() and space_at is None:
            space_at = offset
    return "".join(out), tuple(origin)


TEXT = st.text(alphabet=st.sampled_from("aZ9ß ,.\n\t-'İﬁΣς\u00a0\u2003x"), max_size=200) | st.text(max_size=200)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_normalising_is_what_the_definition_does(text: str) -> None:
    normal = normalise(text)
    assert (normal.text, normal.origin) == normalised_by_loop(text)


def runs_by_loop(mine: list[tuple[int, int]], other: list[tuple[int, int]]) -> set[tuple[int, int, int]]:
    """Maximal diagonal runs, (first k-gram here, first there, length), from (position, hash) pairs in order;
    a hash is paired with its first MAX_PLACES_PER_KGRAM places in the other text."""
    places: dict[int, list[int]] = {}
    for position, value in other:
        if len(places.setdefault(value, [])) < MAX_PLACES_PER_KGRAM:
            places[value].append(position)
    pairs = {(position, place) for position, value in mine for place in places.get(value, ())}
    return {
        (a, b, next(n for n in range(1, len(pairs) + 2) if (a + n, b + n) not in pairs))
        for a, b in pairs
        if (a - 1, b - 1) not in pairs
    }


HASHES = st.lists(st.integers(-6, 6) | st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=300)


@settings(max_examples=200, deadline=None)
@given(HASHES, st.integers(1, 70))
def test_winnowing_picks_what_the_definition_picks(hashes: list[int], window: int) -> None:
    picked = _winnow(np.array(hashes, dtype=np.int64), window)
    assert picked.tolist() == robust_winnowing(hashes, window)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=400, unique=True), st.integers(1, 90))
def test_winnowing_without_repeated_kgrams_picks_what_the_definition_picks(hashes: list[int], window: int) -> None:
    """Distinct hashes, as most prose gives: every window's minimum is one place."""
    picked = _winnow(np.array(hashes, dtype=np.int64), window)
    assert picked.tolist() == robust_winnowing(hashes, window)


SHARED = st.lists(st.tuples(st.integers(0, 12), st.booleans()), max_size=250).map(
    lambda items: [(position, value) for position, (value, kept) in enumerate(items) if kept]
)


def arrays(mine: list[tuple[int, int]], other: list[tuple[int, int]]) -> _Runs:
    def columns(pairs: list[tuple[int, int]]) -> tuple[list[int], list[int]]:
        return [position for position, _ in pairs], [value for _, value in pairs]

    return _diagonal_runs(*columns(mine), *columns(other))


@settings(max_examples=200, deadline=None)
@given(SHARED, SHARED)
def test_diagonal_runs_are_the_maximal_runs_of_pairs(mine: list[tuple[int, int]], other: list[tuple[int, int]]) -> None:
    runs = arrays(mine, other)
    found = set(zip(runs.mine.tolist(), runs.other.tolist(), runs.length.tolist(), strict=True))
    assert found == runs_by_loop(mine, other) and len(found) == len(runs.mine)


@settings(max_examples=100, deadline=None)
@given(SHARED, SHARED, st.integers(1, 12))
def test_kept_runs_are_the_longest_that_overlap_no_longer_one(
    mine: list[tuple[int, int]], other: list[tuple[int, int]], limit: int
) -> None:
    runs = arrays(mine, other)
    kept: list[_Run] = []
    for a, b, n in sorted(runs_by_loop(mine, other), key=lambda run: (-run[2], run[0], run[1])):
        overlapping = any(
            (a < k.mine + k.length and k.mine < a + n) or (b < k.other + k.length and k.other < b + n) for k in kept
        )
        if len(kept) < limit and not overlapping:
            kept.append(_Run(a, b, n, n))
    assert _non_overlapping(runs, limit) == kept


def karp_rabin(text: str, k: int) -> list[int]:
    """Each k-gram's polynomial hash of its code points, base 0x100000001B3 modulo 2**64, through the
    splitmix64 finaliser, as a signed 64-bit integer: the values stored in every index, so they may
    never change."""
    mask = (1 << 64) - 1
    out = []
    for start in range(len(text) - k + 1):
        value = 0
        for char in text[start : start + k]:
            value = (value * 0x100000001B3 + ord(char)) & mask
        value ^= value >> 30
        value = (value * 0xBF58476D1CE4E5B9) & mask
        value ^= value >> 27
        value = (value * 0x94D049BB133111EB) & mask
        value ^= value >> 31
        out.append(value - (1 << 64) if value >= 1 << 63 else value)
    return out


@settings(max_examples=100, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=200), st.integers(1, 40))
def test_kgram_hashes_are_the_polynomial_hash_of_each_kgram(text: str, k: int) -> None:
    assert kgram_hashes(text, k) == karp_rabin(text, k)


def test_kgram_hashes_of_a_known_text_are_what_earlier_versions_stored() -> None:
    # Pinned: fingerprints already in an index must keep matching new checks.
    assert kgram_hashes("the quick brown fox", 15)[:2] == [-6094363887590845072, 6202133490245403038]
