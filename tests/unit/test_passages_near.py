"""Passages aligned around the fingerprints two texts share find what aligning the whole texts finds."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from core.similarity.passages import aligned_passages, passages_near
from core.similarity.winnowing import fingerprint, guarantee_threshold, normalise

K, WINDOW = 25, 56
T = guarantee_threshold(K, WINDOW)
MARGIN = 2 * (T + K)
WORDS = ["".join(random.Random(n).choices("abcdefghijklmnopqrstuvwxyz", k=2 + n % 9)) for n in range(800)]


def prose(seed: int, words: int) -> str:
    rng = random.Random(seed)
    out = []
    for n in range(words):
        word = rng.choice(WORDS)
        out.append(word.capitalize() + "." if n % 13 == 12 else word)
    return " ".join(out)


def shared_pairs(mine: str, other: str) -> list[tuple[int, int]]:
    """What the index gives: where each fingerprint held by both sits in each text."""
    there: dict[int, list[int]] = {}
    for print_ in fingerprint(other, K, WINDOW):
        there.setdefault(print_.hash, []).append(print_.start)
    return [(p.start, place) for p in fingerprint(mine, K, WINDOW) for place in there.get(p.hash, ())]


@settings(max_examples=40, deadline=None)
@given(
    seeds=st.tuples(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000)),
    copied_words=st.integers(20, 400),
    at=st.floats(0, 1),
    shouting=st.booleans(),
)
def test_a_copied_passage_is_found_as_aligning_the_whole_texts_finds_it(
    seeds: tuple[int, int, int], copied_words: int, at: float, shouting: bool
) -> None:
    # Three texts of their own (seeds from separate ranges), one passage copied between two of them.
    passage = prose(20_000 + seeds[2], copied_words)
    mine = prose(seeds[0], 600)
    cut = mine.rfind(" ", 0, int(len(mine) * at)) + 1
    mine = f"{mine[:cut]}{passage.upper() if shouting else passage} {mine[cut:]}"
    other = f"{prose(10_000 + seeds[1], 500)} {passage} {prose(30_000 + seeds[1], 300)}"

    whole = aligned_passages(mine, other, K)
    near = passages_near(mine, other, shared_pairs(mine, other), K, margin=MARGIN)
    longest = max(whole, key=lambda p: p.end - p.start)
    assert longest in near, (longest, near)
    same = [normalise(mine[p.start : p.end]).text == normalise(other[p.other_start : p.other_end]).text for p in near]
    assert all(same), near


def test_texts_sharing_no_fingerprint_have_no_passages() -> None:
    assert passages_near(prose(1, 300), prose(2, 300), [], K, margin=MARGIN) == []


def test_passages_are_offsets_in_the_whole_texts_in_order_and_do_not_overlap() -> None:
    first, second = prose(10, 60), prose(11, 80)
    mine = f"{prose(12, 400)} {first} {prose(13, 400)} {second} {prose(14, 100)}"
    other = f"{second} {prose(15, 300)} {first}"
    near = passages_near(mine, other, shared_pairs(mine, other), K, margin=MARGIN)
    assert [mine[p.start : p.end] for p in near] == [first, second]
    assert [other[p.other_start : p.other_end] for p in near] == [first, second]
