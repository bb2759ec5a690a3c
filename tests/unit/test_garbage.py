"""A service process's start-up heap is left out of garbage collection, and collections are rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from core.garbage import collect_garbage_rarely


@pytest.fixture
def collector_restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_what_exists_at_start_up_is_never_walked_again_and_young_collections_are_rarer(
    collector_restored: None,
) -> None:
    at_start_up = [object() for _ in range(3)]  # tracked containers: a list holding objects
    assert any(item is at_start_up for item in gc.get_objects())

    collect_garbage_rarely(12_345)

    assert not any(item is at_start_up for item in gc.get_objects())  # in the permanent generation
    assert gc.get_freeze_count() > 0
    assert gc.get_threshold()[0] == 12_345
    created_later: list[object] = []
    assert any(item is created_later for item in gc.get_objects())
