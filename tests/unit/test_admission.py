"""Retry-After slots: a storm is spread over the seconds ahead, a trickle is never sent away long."""

from __future__ import annotations

from collections import Counter

import pytest

from router import admission
from router.admission import Admission


class Clock:
    def __init__(self) -> None:
        self.now = 500.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    clock = Clock()
    monkeypatch.setattr(admission, "time", clock)
    return clock


def test_a_storm_at_one_instant_gets_slots_in_order_at_the_rate_sessions_are_welcomed(clock: Clock) -> None:
    gate = Admission(floor_seconds=2)
    hints = [gate.retry_after() for _ in range(600)]
    assert hints == sorted(hints) and hints[0] == 2
    # 100 sessions/s assumed before anything is measured, with 1.5x headroom: 150 per second.
    assert max(Counter(hints).values()) <= 151 and hints[-1] == 6


def test_clients_refused_slower_than_the_slots_come_round_are_told_the_floor(clock: Clock) -> None:
    gate = Admission(floor_seconds=1)
    hints = []
    for _ in range(50):
        hints.append(gate.retry_after())
        clock.now += 0.05
    assert set(hints) == {1}


def test_the_rate_learned_from_welcomed_sessions_sets_the_spacing(clock: Clock) -> None:
    gate = Admission(floor_seconds=1)
    for _ in range(10):  # ten seconds of 1,000 welcomed sessions a second
        for _ in range(1000):
            gate.welcomed()
        clock.now += 1.0
        gate.retry_after()
    hints = [gate.retry_after() for _ in range(1500)]
    assert Counter(hints)[2] > 1000  # far more than the 150/s assumed at start share the first slot second


def test_no_client_is_told_to_wait_longer_than_the_cap(clock: Clock) -> None:
    gate = Admission(floor_seconds=1, max_seconds=5)
    assert max(gate.retry_after() for _ in range(10_000)) == 5
