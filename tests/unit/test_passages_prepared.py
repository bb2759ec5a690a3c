"""A text prepared once and paired with several others finds what pairing the raw texts finds."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from core.similarity.passages import _positions_in, _table, aligned_passages, prepare

WORDS = st.sampled_from(["essay", "the", "copied", "passage", "argument", "of", "evidence", "and", "data"])
TEXTS = st.lists(WORDS, min_size=0, max_size=120).map(" ".join)


@settings(max_examples=60, deadline=None)
@given(mine=TEXTS, other=TEXTS, shared=TEXTS)
def test_prepared_text_gives_the_same_passages(mine: str, other: str, shared: str) -> None:
    a, b = f"{mine} {shared}", f"{shared} {other}"
    expected = aligned_passages(a, b, 12)
    assert aligned_passages(prepare(a, 12), b, 12) == expected


def test_a_copied_paragraph_is_found_in_both_texts() -> None:
    paragraph = "the evidence for the argument was copied word for word from another essay"
    mine = "an introduction in my words: " + paragraph + "; and my own conclusion."
    other = "somebody else's opening lines, then " + paragraph + "."
    [passage] = aligned_passages(prepare(mine, 12), other, 12)
    assert mine[passage.start : passage.end] == paragraph
    assert other[passage.other_start : passage.other_end] == paragraph


@settings(max_examples=60, deadline=None)
@given(
    hashes=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300),
    values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=300),
    low_bits_clash=st.booleans(),
)
def test_membership_filter_finds_exactly_the_shared_hashes(
    hashes: list[int], values: list[int], low_bits_clash: bool
) -> None:
    """The flag table only narrows the search: hashes equal in their low bits but not equal are not shared."""
    if low_bits_clash:  # each value also appears with its high bits changed
        hashes = hashes + [(value ^ (1 << 40)) for value in values]
    mine, pool = np.array(hashes, dtype=np.int64), np.unique(np.array(values, dtype=np.int64))
    found = _positions_in(mine, pool, _table(pool))
    assert found.tolist() == np.flatnonzero(np.isin(mine, pool)).tolist()
