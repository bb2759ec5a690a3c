"""Winnowing fingerprints and containment scores: pure functions, checked with hypothesis."""

from __future__ import annotations

import random

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.similarity.winnowing import (
    Fingerprint,
    Fingerprints,
    MatchSummary,
    Report,
    containment,
    containment_in,
    fingerprint,
    fingerprint_columns,
    guarantee_threshold,
    kgram_hashes,
    merge_spans,
    normalise,
    window_for,
    winnow,
)

K, W = 25, 20
T = guarantee_threshold(K, W)
_VOCABULARY = random.Random(2003)
WORDS = ["".join(_VOCABULARY.choices("abcdefghijklmnopqrstuvwxyz", k=2 + i % 9)) for i in range(600)]


def essay(seed: int, chars: int) -> str:
    """Prose-like text: random words, spaces, the odd comma and full stop."""
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        word = rng.choice(WORDS)
        if rng.random() < 0.08:
            word = word.capitalize() + rng.choice([",", "."])
        out.append(word)
        size += len(word) + 1
    return " ".join(out)


def index_of(documents: dict[int, str]) -> dict[int, set[int]]:
    """Each document's hashes, as the index's look-up answers them."""
    return {doc_id: {fp.hash for fp in fingerprint(text, K, W)} for doc_id, text in documents.items()}


def test_threshold_and_window_are_inverse() -> None:
    assert T == 44
    assert window_for(T, K) == W


def test_normalise_folds_case_whitespace_and_punctuation_and_keeps_origins() -> None:
    text = "  Hello,\n\tWORLD!  Straße"
    normal = normalise(text)
    assert normal.text == "hello world strasse"
    assert len(normal.origin) == len(normal.text)
    assert text[normal.origin[0]] == "H"
    assert text[normal.origin[normal.text.index("w")]] == "W"


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet="abcdefgh", min_size=0, max_size=300), st.integers(1, 30))
def test_kgram_hashes_roll_like_hashing_each_kgram(text: str, k: int) -> None:
    rolled = kgram_hashes(text, k)
    assert len(rolled) == max(0, len(text) - k + 1)
    assert rolled == [kgram_hashes(text[i : i + k], k)[0] for i in range(len(rolled))]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-50, 50), min_size=1, max_size=200), st.integers(1, 12))
def test_every_window_contains_a_pick_that_is_its_minimum(hashes: list[int], window: int) -> None:
    picks = winnow(hashes, window)
    positions = {index for _, index in picks}
    size = min(window, len(hashes))
    for left in range(len(hashes) - size + 1):
        inside = [i for i in positions if left <= i < left + size]
        assert inside, "a window without a fingerprint"
        assert min(hashes[left : left + size]) in {hashes[i] for i in inside}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(300, 3000))
def test_identical_texts_score_100(seed: int, chars: int) -> None:
    text = essay(seed, chars)
    report = containment(fingerprint(text, K, W), index_of({7: text}))
    assert report.score == 100.0
    assert report.matches[0].other == 7


def test_reformatting_does_not_hide_a_copy() -> None:
    original = essay(1, 2000)
    disguised = "\n\n".join(original.upper().replace(" ", "  \t").split(","))
    report = containment(fingerprint(disguised, K, W), index_of({1: original}))
    assert report.score == 100.0


@settings(max_examples=25, deadline=None)
@given(
    st.text(alphabet="abcdefghijklm ", min_size=50, max_size=2000),
    st.text(alphabet="nopqrstuvwxyz ", min_size=50, max_size=2000),
)
def test_disjoint_texts_score_0(first: str, second: str) -> None:
    report = containment(fingerprint(second, K, W), index_of({1: first}))
    assert report.score == 0.0
    assert report.matches == []


@settings(max_examples=100, deadline=None)
@given(
    st.text(alphabet="abcdef", max_size=400),
    st.text(alphabet="abcdef", max_size=400),
    st.text(alphabet="abcdef", max_size=400),
    st.text(alphabet="abcdef", max_size=400),
    st.text(alphabet="abcdef", min_size=T, max_size=T + 200),
    st.sampled_from([(K, W), (5, 4), (3, 1), (8, 30)]),
)
def test_any_shared_substring_of_the_threshold_length_is_detected(
    a_before: str, a_after: str, b_before: str, b_after: str, shared: str, k_and_w: tuple[int, int]
) -> None:
    k, w = k_and_w
    shared = shared[: max(guarantee_threshold(k, w), len(shared) - 50)]
    first = fingerprint(a_before + shared + a_after, k, w)
    second = fingerprint(b_before + shared + b_after, k, w)
    assert {fp.hash for fp in first} & {fp.hash for fp in second}


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.integers(2000, 8000), st.floats(0.0, 0.6))
def test_copying_40_percent_of_another_scores_near_40_and_names_it(seed: int, chars: int, where: float) -> None:
    source = essay(seed, chars)
    decoy = essay(seed + 50_000, chars)
    start = source.index(" ", int(len(source) * where)) + 1
    copied = source[start : start + int(0.4 * chars)]
    own = essay(seed + 100_000, chars - len(copied))
    cut = own.index(" ", len(own) // 2)
    suspect = own[:cut] + " " + copied + " " + own[cut:]

    report = containment(fingerprint(suspect, K, W), index_of({11: source, 12: decoy}))

    assert 32 <= report.score <= 48
    assert report.matches[0].other == 11
    assert all(match.other != 12 for match in report.matches)
    # The spans point at the copied passage in the suspect's own text.
    first, last = report.matches[0].spans[0][0], report.matches[0].spans[-1][1]
    copy_at = suspect.index(copied)
    assert copy_at - K <= first and last <= copy_at + len(copied) + K


def containment_by_definition(prints: list[Fingerprint], held_by: dict[int, set[int]], top: int) -> Report:
    """Containment one fingerprint at a time: who holds it, then each holder's prints."""
    holders: dict[int, set[int]] = {}
    for other, hashes in held_by.items():
        for value in hashes:
            holders.setdefault(value, set()).add(other)
    per_other: dict[int, list[Fingerprint]] = {}
    matched = 0
    for print_ in prints:
        matched += bool(holders.get(print_.hash))
        for other in holders.get(print_.hash, ()):
            per_other.setdefault(other, []).append(print_)
    matches = []
    for other, found in sorted(per_other.items(), key=lambda item: (-len(item[1]), item[0]))[:top]:
        spans = sorted(sorted(merge_spans((p.start, p.end) for p in found), key=lambda span: span[0] - span[1])[:5])
        matches.append(MatchSummary(other, len(found), round(100.0 * len(found) / len(prints), 1), spans))
    return Report(round(100.0 * matched / len(prints), 1), len(prints), matches)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=60),
    st.dictionaries(st.integers(1, 12), st.sets(st.integers(0, 40), max_size=20), max_size=10),
    st.integers(1, 6),
)
def test_containment_counts_each_fingerprint_as_the_definition_does(
    hashes: list[int], held_by: dict[int, set[int]], top: int
) -> None:
    # Repeated hashes, holders sharing hashes, ties in shared counts: the ranking and every figure agree.
    prints = [Fingerprint(value, at, at * 10, at * 10 + 25) for at, value in enumerate(hashes)]
    assert containment(prints, held_by, top=top) == containment_by_definition(prints, held_by, top)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 30), min_size=1, max_size=60),
    st.lists(st.tuples(st.integers(1, 12), st.integers(0, 40)), max_size=80),
    st.integers(1, 6),
)
def test_a_document_holding_a_hash_in_several_places_counts_it_once(
    hashes: list[int], hits: list[tuple[int, int]], top: int
) -> None:
    # As the look-up answers: (document, hash) per place, in any order, the same pair repeated.
    prints = [Fingerprint(value, at, at * 10, at * 10 + 25) for at, value in enumerate(hashes)]
    holders = np.array([other for other, _ in hits], dtype=np.int64)
    values = np.array([value for _, value in hits], dtype=np.int64)
    held_by: dict[int, set[int]] = {}
    for other, value in hits:
        held_by.setdefault(other, set()).add(value)
    assert containment_in(prints, holders, values, top=top) == containment_by_definition(prints, held_by, top)


def test_empty_and_tiny_texts_have_no_fingerprints_and_score_0() -> None:
    assert fingerprint("", K, W) == []
    assert fingerprint("too short", K, W) == []
    assert containment([], {}).score == 0.0


def test_the_columns_a_check_scores_are_the_fingerprints_and_keep_them_together() -> None:
    text = " ".join(random.Random(5).choices(WORDS, k=400))
    prints = fingerprint(text, K, W)
    columns = fingerprint_columns(text, K, W)
    assert len(columns) == len(prints) > 0
    assert columns.rows() == prints == Fingerprints.of(prints).rows()
    # Leaving some out (boilerplate) keeps each one's hash with its own place in the text.
    keep = np.array([value % 3 != 0 for value in columns.hashes.tolist()])
    assert columns.where(keep).rows() == [p for p, kept in zip(prints, keep.tolist(), strict=True) if kept]
    assert len(fingerprint_columns("too short", K, W)) == 0
