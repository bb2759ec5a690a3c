"""The arrival curve before a deadline and the forecast it makes."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from autoscaler.forecast import DAY, HOUR, MAX_BEHIND, ArrivalCurve, DeadlineLoad, forecast
from autoscaler.policy import PoolInputs, PoolLimits, decide

CURVE = ArrivalCurve(final_day_share=0.86, final_hour_share=0.4, surge_seconds=600)
NO_LATE = 0.0  # no late window: the curve before the deadline holds every submission


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


def test_the_rate_does_not_drop_at_one_hour_before_the_deadline() -> None:
    """The final hour continues the day's rate; it used to fall 13x at -1 h and recover only at -34 min."""
    assert CURVE.density(HOUR + 1) <= CURVE.density(HOUR - 1) <= 1.1 * CURVE.density(HOUR + 1)
    us = [u * 60.0 for u in range(0, 24 * 60 + 1)]
    densities = [CURVE.density(u) for u in us]
    # Rising all the way to the deadline.
    assert all(a >= b - 1e-15 for a, b in itertools.pairwise(densities))


def test_the_late_window_holds_the_late_share_and_ends_at_the_cut_off() -> None:
    late_window = 2 * HOUR
    assert CURVE.still_to_come(1e9, late_window) == pytest.approx(1.0)
    assert CURVE.still_to_come(0, late_window) == pytest.approx(CURVE.late_share)
    assert CURVE.still_to_come(-late_window, late_window) == 0.0
    assert CURVE.rate(-60, late_window) > 0
    # Without a late window, everything arrives by the deadline.
    assert CURVE.still_to_come(0, NO_LATE) == 0.0


def test_students_who_already_submitted_are_not_expected_again() -> None:
    everyone_done = DeadlineLoad(1, deadline=10_000, enrolled=300, submitted=300)
    assert forecast([everyone_done], now=0, lead=60, curve=CURVE).jobs == 0


def test_all_remaining_students_arrive_by_the_deadline() -> None:
    # On the curve's schedule with 30 minutes left: the rest all come by the deadline.
    submitted = round(1000 * (1 - CURVE.cdf(30 * 60)))
    load = DeadlineLoad(1, deadline=30 * 60, enrolled=1000, submitted=submitted)
    whole = forecast([load], now=0, lead=30 * 60, curve=CURVE)
    assert whole.jobs == pytest.approx(1000 - submitted)
    # Far behind it (800 of 1,000 still to come): followed, but at most MAX_BEHIND x the curve's own expectation.
    behind = forecast([DeadlineLoad(1, 30 * 60, 1000, 200)], now=0, lead=30 * 60, curve=CURVE)
    assert behind.jobs == pytest.approx(MAX_BEHIND * 1000 * CURVE.cdf(30 * 60))


def test_the_last_students_are_still_forecast_once_the_submit_share_has_submitted() -> None:
    """95% of 1,000 have submitted 10 minutes out: the last ones still come, and are forecast."""
    load = DeadlineLoad(1, deadline=600, enrolled=1000, submitted=950, submit_share=0.95)
    ahead = forecast([load], now=0, lead=125, curve=CURVE)
    assert ahead.jobs > 1
    assert ahead.peak_rate > 0.01
    assert load.expected_remaining(0, CURVE) <= 50


@pytest.mark.parametrize("before", [10, 5, 1])
def test_a_class_behind_the_curve_does_not_make_the_rate_explode_at_the_deadline(before: float) -> None:
    """90% of 30,000 submitted with 10, 5, 1 s to go: the rate stays bounded by the curve, clipped."""
    load = DeadlineLoad(1, deadline=1000, enrolled=30_000, submitted=27_000, submit_share=0.95)
    ahead = forecast([load], now=1000 - before, lead=65, curve=CURVE)
    bound = MAX_BEHIND * 0.95 * 30_000 * CURVE.density(0)
    assert ahead.peak_rate <= bound * 1.0001
    assert ahead.jobs <= 3000
    # And it stays the same order of magnitude from 10 s to 1 s (the old forecast went 21 -> 178 replicas).
    at_ten = forecast([load], now=1000 - 10, lead=65, curve=CURVE).peak_rate
    assert ahead.peak_rate <= 1.1 * at_ten


def test_the_late_window_keeps_forecasting_until_the_cut_off() -> None:
    load = DeadlineLoad(1, deadline=1000, enrolled=1000, submitted=900, submit_share=0.95, cutoff=1000 + HOUR)
    after_deadline = forecast([load], now=1060, lead=65, curve=CURVE)
    assert after_deadline.jobs > 0.5
    assert after_deadline.assignments == 1
    assert forecast([load], now=1000 + HOUR + 1, lead=65, curve=CURVE).jobs == 0
    # Without a late window nothing is forecast after the deadline.
    on_time_only = DeadlineLoad(1, deadline=1000, enrolled=1000, submitted=900, submit_share=0.95)
    assert forecast([on_time_only], now=1060, lead=65, curve=CURVE).jobs == 0


def test_students_with_an_extension_are_due_at_their_own_deadline() -> None:
    """800 due now, 200 with an extension by a day: at the first deadline only the 800 peak."""
    everyone = DeadlineLoad(1, deadline=1000, enrolled=1000, submitted=0)
    on_time = DeadlineLoad(1, deadline=1000, enrolled=800, submitted=0)
    extended = DeadlineLoad(1, deadline=1000 + DAY, enrolled=200, submitted=0)
    split = forecast([on_time, extended], now=1000 - 60, lead=65, curve=CURVE)
    assert split.peak_rate == pytest.approx(0.8 * forecast([everyone], now=940, lead=65, curve=CURVE).peak_rate, 0.01)
    assert split.assignments == 1
    assert forecast([on_time, extended], now=1000 + DAY - 60, lead=65, curve=CURVE).jobs > 10


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
    assert load.expected_remaining(0, CURVE) == pytest.approx(5000)
    assert path[0] == 1  # ten hours out: the minimum
    assert path[int(deadline - 300)] >= 4  # minutes before: grown
    assert path[int(deadline - 10)] >= path[int(deadline - 300)] > path[int(deadline - 2 * HOUR)]
    assert path[int(deadline + 590)] == 1  # after the deadline and the window: back down


def test_a_load_with_its_own_learned_curve_is_forecast_with_it() -> None:
    early = ArrivalCurve(final_day_share=0.1, final_hour_share=0.01)
    shared = DeadlineLoad(1, deadline=HOUR, enrolled=1000, submitted=0, submit_share=0.95)
    own = DeadlineLoad(2, deadline=HOUR, enrolled=1000, submitted=0, submit_share=0.95, curve=early)
    default = forecast([shared], now=0, lead=HOUR, curve=ArrivalCurve())
    learned = forecast([own], now=0, lead=HOUR, curve=ArrivalCurve())
    assert learned.jobs < 0.1 * default.jobs
    assert forecast([shared, own], now=0, lead=HOUR, curve=ArrivalCurve()).jobs == default.jobs + learned.jobs
