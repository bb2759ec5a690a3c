"""The arrival curve before a deadline and the forecast it makes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.forecast import DAY, HOUR, ArrivalCurve, DeadlineLoad, forecast
from autoscaler.policy import PoolInputs, PoolLimits, decide

CURVE = ArrivalCurve(final_day_share=0.86, final_hour_share=0.4, surge_seconds=600)


def test_the_default_curve_puts_86_percent_in_the_final_day() -> None:
    assert CURVE.cdf(DAY) == pytest.approx(0.86)
    assert CURVE.cdf(HOUR) == pytest.approx(0.40)
    assert CURVE.cdf(1e9) == pytest.approx(1.0)


def test_the_rate_rises_sharply_in_the_last_hour() -> None:
    assert CURVE.density(60) > 10 * CURVE.density(HOUR - 60)
    assert CURVE.density(60) > 10 * CURVE.density(5 * HOUR)


@given(st.floats(min_value=0, max_value=30 * DAY), st.floats(min_value=0, max_value=30 * DAY))
def test_the_cdf_is_monotone(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert CURVE.cdf(low) <= CURVE.cdf(high) + 1e-12


def test_students_who_already_submitted_are_not_expected_again() -> None:
    everyone_done = DeadlineLoad(1, deadline=10_000, enrolled=300, submitted=300)
    assert forecast([everyone_done], now=0, lead=60, curve=CURVE).jobs == 0


def test_all_remaining_students_arrive_by_the_deadline() -> None:
    load = DeadlineLoad(1, deadline=30 * 60, enrolled=1000, submitted=200)
    whole = forecast([load], now=0, lead=30 * 60, curve=CURVE)
    assert whole.jobs == pytest.approx(800)


def test_the_forecast_raises_replicas_before_a_deadline_and_lets_them_fall_after() -> None:
    """A 5,000-student deadline: the pool grows before it, and shrinks after it once the window passed."""
    deadline = 10 * HOUR
    limits = PoolLimits(min_replicas=1, max_replicas=200, scale_down_window=120, lead=70, headroom=0.1)
    load = DeadlineLoad(1, deadline=deadline, enrolled=5000, submitted=0)
    replicas, history, path = 1, (), {}
    for t in range(0, int(deadline + 600), 10):
        # Students who submit stop counting as remaining, as they would in the database.
        submitted = round(5000 * (1 - CURVE.cdf(deadline - t) / CURVE.cdf(deadline))) if t < deadline else 5000
        ahead = forecast([DeadlineLoad(1, deadline, 5000, submitted)], now=t, lead=limits.lead, curve=CURVE)
        inputs = PoolInputs(
            task="similarity",
            ready=0,
            running=0,
            deferred=0,
            current_replicas=replicas,
            drain_rate=1.0,
            forecast_jobs=ahead.jobs,
            forecast_peak_rate=ahead.peak_rate,
        )
        decision = decide(inputs, limits, now=t, history=history)
        replicas, history = decision.desired, decision.history
        path[t] = replicas
    assert load.expected_remaining == 5000
    assert path[0] == 1  # ten hours out: the minimum
    assert path[int(deadline - 300)] >= 4  # minutes before: grown
    assert path[int(deadline - 10)] >= path[int(deadline - 300)] > path[int(deadline - 2 * HOUR)]
    assert path[int(deadline + 590)] == 1  # after the deadline and the window: back down
