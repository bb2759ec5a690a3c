"""Arrival curves and submit shares learned from synthetic past assignments (autoscaler.history)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from autoscaler.forecast import DAY, HOUR, ArrivalCurve, DeadlineLoad, forecast
from autoscaler.history import PRIOR_ASSIGNMENTS, SHARPEST_SURGE, HistoryLearner, Learned, PastAssignment, fit

PRIOR = Learned(ArrivalCurve(), submit_share=0.95)


def past(
    course: int,
    n: int,
    enrolled: int,
    before_deadline: np.ndarray,
    late_window: float = 0.0,
) -> list[PastAssignment]:
    """`n` closed assignments, each with first uploads at these seconds before its deadline."""
    return [
        PastAssignment(
            assignment_id=course * 100 + k,
            course_id=course,
            deadline=1e9 + k * 7 * DAY,
            cutoff=1e9 + k * 7 * DAY + late_window,
            enrolled=enrolled,
            first_uploads=tuple(1e9 + k * 7 * DAY - before_deadline),
        )
        for k in range(n)
    ]


def test_no_history_forecasts_with_the_prior() -> None:
    assert fit([], PRIOR) == PRIOR
    learner = HistoryLearner(PRIOR)
    learner.refit([], course_ids={7}, now=0.0)
    (load,) = learner.apply([DeadlineLoad(1, deadline=1000, enrolled=100, submitted=0, course_id=7)])
    assert (load.curve, load.submit_share) == (PRIOR.curve, PRIOR.submit_share)


def test_a_course_whose_students_submit_early_gets_an_early_curve() -> None:
    rng = np.random.default_rng(1)
    # Everyone submits two to four days ahead: nobody in the final day.
    early = past(1, n=12, enrolled=200, before_deadline=rng.uniform(2 * DAY, 4 * DAY, size=190))
    learned = fit(early, PRIOR)
    assert learned.curve.cdf(DAY) < 0.25 * PRIOR.curve.cdf(DAY)
    assert learned.curve.cdf(HOUR) < 0.25 * PRIOR.curve.cdf(HOUR)
    # So the final hour's forecast for such a course is far below the prior's.
    load = DeadlineLoad(1, deadline=HOUR, enrolled=200, submitted=0, submit_share=learned.submit_share)
    assert forecast([load], 0, HOUR, learned.curve).jobs < 0.25 * forecast([load], 0, HOUR, PRIOR.curve).jobs


def test_a_sharp_last_minute_surge_is_learned() -> None:
    rng = np.random.default_rng(2)
    # 70% in the final hour with a 2-minute time constant, the rest spread over the day before.
    last_hour = rng.exponential(120.0, size=700)
    day = rng.uniform(HOUR, DAY, size=300)
    learned = fit(past(1, n=30, enrolled=1000, before_deadline=np.concatenate([last_hour, day])), PRIOR)
    assert learned.curve.final_hour_share == pytest.approx(0.7 * 30 / (30 + PRIOR_ASSIGNMENTS) + 0.4 * 0.09, abs=0.03)
    assert learned.curve.surge_seconds < 200
    assert learned.curve.rate(30, 0) > 3 * PRIOR.curve.rate(30, 0)


def test_a_course_where_sixty_percent_submit_gets_that_share() -> None:
    rng = np.random.default_rng(3)
    sixty = past(1, n=40, enrolled=500, before_deadline=rng.exponential(3 * HOUR, size=300))
    assert fit(sixty, PRIOR).submit_share == pytest.approx(0.6, abs=0.05)
    # With a single past assignment the prior still weighs most.
    one = fit(sixty[:1], PRIOR)
    assert one.submit_share == pytest.approx(0.95 * 0.75 + 0.6 * 0.25)


def test_late_work_is_learned_from_assignments_with_a_late_window() -> None:
    rng = np.random.default_rng(4)
    uploads = np.concatenate([rng.exponential(2 * HOUR, size=160), -rng.exponential(600.0, size=40)])
    learned = fit(past(1, n=30, enrolled=220, before_deadline=uploads, late_window=2 * HOUR), PRIOR)
    assert learned.curve.late_share > 0.15
    assert 400 < learned.curve.late_seconds < 900


def test_a_course_with_little_history_follows_the_installation() -> None:
    rng = np.random.default_rng(5)
    others = past(1, n=30, enrolled=300, before_deadline=rng.exponential(HOUR / 2, size=150))
    newcomer = past(2, n=1, enrolled=300, before_deadline=rng.uniform(2 * DAY, 3 * DAY, size=290))
    learner = HistoryLearner(PRIOR)
    learner.refit(others + newcomer, course_ids={1, 2, 3}, now=0.0)
    installation = learner.installation
    assert installation.submit_share < 0.7  # mostly course 1's half-empty classes
    unknown = learner.for_course(3)
    assert unknown.submit_share == installation.submit_share
    newcomer_share = learner.for_course(2).submit_share
    assert installation.submit_share < newcomer_share < 0.96
    # Its prior is what the other courses show (its own assignment does not count twice).
    assert newcomer_share == pytest.approx(fit(others, PRIOR).submit_share * 0.75 + (290 / 300) * 0.25)


def test_refits_at_most_hourly_unless_a_new_course_appears() -> None:
    learner = HistoryLearner(PRIOR)
    assert learner.stale(0.0, {1})
    learner.refit([], {1}, now=0.0)
    assert not learner.stale(1800.0, {1})
    assert learner.stale(1800.0, {1, 2})
    assert learner.stale(3600.0, {1})
    restored = HistoryLearner(PRIOR)
    restored.restore(learner.state())
    assert not restored.stale(1800.0, {1})
    assert restored.for_course(1) == learner.for_course(1)


def test_without_history_the_peak_is_sized_for_a_sharp_surge_too() -> None:
    """A new installation does not know how sharp its students' surge is: pods are up for a sharp one."""
    new = HistoryLearner(PRIOR)
    load = DeadlineLoad(1, deadline=HOUR, enrolled=30_000, submitted=0, submit_share=0.95, course_id=1)
    now = HOUR - 90  # 90 s before the deadline, a 65 s lead
    cautious = forecast(new.apply([load]), now, 65, PRIOR.curve)
    plain = forecast([load], now, 65, PRIOR.curve)
    assert cautious.peak_rate > 1.8 * plain.peak_rate
    assert cautious.jobs == plain.jobs  # the expected count stays the best estimate
    # With a few past assignments whose surge was slow, the learned curve alone sizes it.
    rng = np.random.default_rng(6)
    slow = past(1, n=8, enrolled=300, before_deadline=rng.exponential(20 * 60, size=280))
    new.refit(slow, {1}, now=0.0)
    learned = new.apply([load])
    assert learned[0].sharpest_surge is None
    hedged = [replace(learned[0], sharpest_surge=SHARPEST_SURGE)]
    assert forecast(learned, now, 65, PRIOR.curve).peak_rate < 0.8 * forecast(hedged, now, 65, PRIOR.curve).peak_rate
