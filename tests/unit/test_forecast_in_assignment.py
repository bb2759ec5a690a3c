"""A new installation learns the surge within the current assignment (autoscaler.forecast.fit_surge).

Without history the peak used to be sized for a 2-minute surge with the behind-the-curve factor until the
deadline: a class where 90% submit got twice the replicas it needed, and one with a 2-minute surge paid for
the prior's 10-minute one from 20 minutes out. The arrivals so far (the count each cycle saw) now bound it.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from autoscaler.forecast import HOUR, MIN_TRACK_SECONDS, ArrivalCurve, DeadlineLoad, fit_surge, forecast
from autoscaler.history import SHARPEST_SURGE, HistoryLearner, Learned

PRIOR = ArrivalCurve()  # the shipped prior: 40% in the final hour, tau 10 min
DEADLINE = 10 * HOUR
STUDENTS = 30_000
LEAD = 65.0
CYCLE = 5.0


def class_at(now: float, truth: ArrivalCurve, submit_share: float, seed: int = 1) -> DeadlineLoad:
    """A new installation's load at `now`, with the count sampled every cycle over the last hour (Poisson arrivals)."""
    rng = np.random.default_rng(seed)
    times = np.arange(now - HOUR, now + CYCLE / 2, CYCLE)
    expected = STUDENTS * submit_share * (1.0 - np.array([truth.cdf(DEADLINE - t) for t in times]))
    arrivals = rng.poisson(np.diff(expected))
    counts = np.concatenate(([round(expected[0])], round(expected[0]) + np.cumsum(arrivals)))
    return DeadlineLoad(
        1,
        DEADLINE,
        STUDENTS,
        int(counts[-1]),
        submit_share=0.95,  # the prior's: the class's own share is not known
        curve=PRIOR,
        sharpest_surge=SHARPEST_SURGE,
        observed=tuple((float(t), int(n)) for t, n in zip(times, counts, strict=True)),
    )


def true_peak(now: float, truth: ArrivalCurve, submit_share: float) -> float:
    """The true rate at its highest inside [now, now + lead] (the curve rises to the deadline)."""
    return STUDENTS * submit_share * truth.density(max(DEADLINE - now - LEAD, 0.0))


def peak(load: DeadlineLoad, now: float) -> float:
    return forecast([load], now, LEAD, PRIOR).peak_rate


def test_a_class_where_only_90_percent_submit_is_sized_for_its_own_surge_once_it_shows() -> None:
    truth = replace(PRIOR, surge_seconds=120.0)
    hedged = []
    for before in (120.0, 65.0, 30.0, 5.0):
        now = DEADLINE - before
        load = class_at(now, truth, submit_share=0.9)
        # Never below what comes (latency first), but nowhere near the hedge's ~2x at the deadline.
        assert true_peak(now, truth, 0.9) <= peak(load, now) <= 1.3 * true_peak(now, truth, 0.9)
        hedged.append(peak(replace(load, observed=()), now) / true_peak(now, truth, 0.9))
    assert max(hedged) > 1.8


def test_a_sharp_surge_not_yet_visible_no_longer_pays_for_the_priors_slow_one() -> None:
    """Ten minutes out a 2-minute surge has not started: the prior's 10-minute surge has, and it is not there."""
    truth = replace(PRIOR, final_hour_share=0.6, surge_seconds=120.0)
    for before in (1800.0, 900.0, 600.0):
        now = DEADLINE - before
        load = class_at(now, truth, submit_share=0.95)
        assert peak(load, now) < 0.4 * peak(replace(load, observed=()), now)
        assert peak(load, now) >= true_peak(now, truth, 0.95)
    # And the pods for the sharp surge are still asked for one lead time before it, as before.
    for before in (300.0, 120.0, 65.0, 10.0):
        now = DEADLINE - before
        load = class_at(now, truth, 0.95)
        assert peak(load, now) >= min(peak(replace(load, observed=()), now), true_peak(now, truth, 0.95))


@pytest.mark.parametrize("share", [0.2, 0.4, 0.6])
def test_a_slow_surge_is_followed_and_never_under_forecast(share: float) -> None:
    """A 10-minute surge (the prior's shape, any share): the fit never forecasts less than the hedge or the truth."""
    truth = replace(PRIOR, final_hour_share=share, surge_seconds=600.0)
    cheaper = []
    for before in (1800.0, 900.0, 300.0, 120.0, 65.0, 10.0):
        now = DEADLINE - before
        load = class_at(now, truth, submit_share=0.95, seed=int(before))
        hedged = peak(replace(load, observed=()), now)
        assert min(hedged, 0.97 * true_peak(now, truth, 0.95)) <= peak(load, now) <= hedged
        cheaper.append(peak(load, now) / hedged)
    # In the last two minutes the hedge's 2-minute surge is ruled out by what has arrived.
    assert cheaper[-1] < 0.5


def test_too_few_samples_keep_the_hedge() -> None:
    truth = replace(PRIOR, surge_seconds=120.0)
    now = DEADLINE - 120
    load = class_at(now, truth, submit_share=0.9)
    short = tuple(s for s in load.observed if now - s[0] < MIN_TRACK_SECONDS - CYCLE)
    assert fit_surge(short, DEADLINE, now) is None
    assert peak(replace(load, observed=short), now) == peak(replace(load, observed=()), now)


def test_with_history_the_arrivals_only_trim_the_learned_curves_peak() -> None:
    """A learned 2-minute curve that still expects 95% to submit: the 90% who do are seen in the final minute."""
    truth = replace(PRIOR, surge_seconds=120.0)
    trimmed = []
    for before in (300.0, 65.0, 10.0):
        now = DEADLINE - before
        load = replace(class_at(now, truth, submit_share=0.9), sharpest_surge=None, curve=truth)
        learned = peak(replace(load, observed=()), now)
        assert min(learned, 0.97 * true_peak(now, truth, 0.9)) <= peak(load, now) <= learned
        trimmed.append(peak(load, now) / learned)
    assert trimmed[-1] < 0.8


def test_the_learner_tracks_each_open_load_and_forgets_closed_ones() -> None:
    learner = HistoryLearner(Learned(PRIOR, 0.95))
    open_load = DeadlineLoad(1, DEADLINE, 100, 0, course_id=3)
    other = DeadlineLoad(2, DEADLINE + HOUR, 100, 0, course_id=3)
    for k in range(4):
        (first, _) = learner.apply([replace(open_load, submitted=k), other], now=float(k * 5))
    assert first.observed == ((0.0, 0), (5.0, 1), (10.0, 2), (15.0, 3))
    # Rows deleted (the count went down): the track starts again.
    (first,) = learner.apply([replace(open_load, submitted=1)], now=20.0)
    assert first.observed == ((20.0, 1),)
    assert set(learner.tracks) == {(1, DEADLINE)}
    # Samples older than the fit uses are dropped.
    (first,) = learner.apply([replace(open_load, submitted=2)], now=20.0 + 2 * HOUR)
    assert first.observed == ((20.0 + 2 * HOUR, 2),)
    # Without a clock nothing is recorded (and the loads carry what was).
    (first,) = learner.apply([replace(open_load, submitted=5)])
    assert first.observed == ((20.0 + 2 * HOUR, 2),)
