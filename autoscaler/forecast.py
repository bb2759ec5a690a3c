"""The expected arrival curve before a deadline, and what it predicts. Pure: no I/O.

Time is measured backwards from the deadline: ``u`` seconds before it. The
curve is a mixture fitted to the published finding that ~86% of submissions
arrive in the final 24 hours, with a configurable share in the final hour
rising exponentially towards the deadline (time constant ``surge_seconds``):

- final hour:        ``final_hour_share``, density ∝ exp(-u / surge_seconds)
- hours 1-24:        the rest of ``final_day_share``, density ∝ exp(-(u - 1 h) / 6 h)
- before that:       ``1 - final_day_share``, density ∝ exp(-(u - 24 h) / 3 days)
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

HOUR = 3600.0
DAY = 24 * HOUR
DAY_TAU = 6 * HOUR
EARLY_TAU = 3 * DAY


@dataclass(frozen=True)
class ArrivalCurve:
    final_day_share: float = 0.86
    final_hour_share: float = 0.40
    surge_seconds: float = 600.0

    @property
    def _shares(self) -> tuple[float, float, float]:
        hour = min(self.final_hour_share, self.final_day_share)
        return hour, self.final_day_share - hour, 1.0 - self.final_day_share

    def cdf(self, u: float) -> float:
        """Share of all eventual submissions that arrive within the final ``u`` seconds."""
        if u <= 0:
            return 0.0
        hour, day, early = self._shares
        total = hour * _truncated_exp_cdf(min(u, HOUR), self.surge_seconds, HOUR)
        if u > HOUR:
            total += day * _truncated_exp_cdf(min(u, DAY) - HOUR, DAY_TAU, DAY - HOUR)
        if u > DAY:
            total += early * (1.0 - math.exp(-(u - DAY) / EARLY_TAU))
        return total

    def density(self, u: float) -> float:
        """Share per second arriving ``u`` seconds before the deadline."""
        if u < 0:
            return 0.0
        hour, day, early = self._shares
        if u <= HOUR:
            return hour * _truncated_exp_pdf(u, self.surge_seconds, HOUR)
        if u <= DAY:
            return day * _truncated_exp_pdf(u - HOUR, DAY_TAU, DAY - HOUR)
        return early * math.exp(-(u - DAY) / EARLY_TAU) / EARLY_TAU


def _truncated_exp_cdf(x: float, tau: float, length: float) -> float:
    return (1.0 - math.exp(-x / tau)) / (1.0 - math.exp(-length / tau))


def _truncated_exp_pdf(x: float, tau: float, length: float) -> float:
    return math.exp(-x / tau) / (tau * (1.0 - math.exp(-length / tau)))


@dataclass(frozen=True)
class DeadlineLoad:
    """One assignment due within the horizon and who may still submit to it."""

    assignment_id: int
    deadline: float  # epoch seconds
    enrolled: int
    submitted: int
    submit_share: float = 1.0

    @property
    def expected_remaining(self) -> float:
        return max(0.0, self.submit_share * self.enrolled - self.submitted)


@dataclass(frozen=True)
class Forecast:
    """Submissions expected over the next lead time, and the peak rate within it."""

    jobs: float
    peak_rate: float
    assignments: int


def forecast(loads: Iterable[DeadlineLoad], now: float, lead: float, curve: ArrivalCurve) -> Forecast:
    """Expected arrivals in [now, now + lead] from students who have not yet submitted.

    Those still to submit arrive over the time left by the curve conditioned on
    not having arrived yet: share (G(u0) - G(u1)) / G(u0) of them in the window.
    Each submission becomes one job on every step's queue, so this is also
    each pool's expected job count.
    """
    jobs = 0.0
    peak = 0.0
    count = 0
    for load in loads:
        u0 = load.deadline - now
        remaining = load.expected_remaining
        if u0 <= 0 or remaining <= 0:
            continue
        u1 = max(0.0, u0 - lead)
        left = curve.cdf(u0)
        if left <= 0:
            continue
        count += 1
        jobs += remaining * (curve.cdf(u0) - curve.cdf(u1)) / left
        # The density jumps only at segment edges; elsewhere it rises towards the deadline.
        probes = [u1, u0] + [edge + eps for edge in (HOUR, DAY) for eps in (-1e-6, 1e-6) if u1 <= edge <= u0]
        peak += remaining * max(curve.density(u) for u in probes) / left
    return Forecast(jobs=jobs, peak_rate=peak, assignments=count)
