"""The expected arrival curve around a deadline, and what it predicts. Pure: no I/O.

Time is measured backwards from the deadline: ``u`` seconds before it
(negative after it). Before the deadline the curve is a mixture fitted to the
published finding that ~86% of submissions arrive in the final 24 hours, with
a configurable share in the final hour rising exponentially towards the
deadline (time constant ``surge_seconds``):

- final hour:  ``final_hour_share``, density ``c + a·exp(-u / surge_seconds)``,
  where ``c`` is the day segment's density at one hour out, so the rate never
  drops at the one-hour mark (a step there made forecasts fall 13x);
- hours 1-24:  the rest of ``final_day_share``, density ∝ exp(-(u - 1 h) / 6 h);
- before that: ``1 - final_day_share``, density ∝ exp(-(u - 24 h) / 3 days).

After the deadline, while the late window (up to the cut-off) is open, a
``late_share`` of the eventual submissions arrive, decaying with time
constant ``late_seconds``. Without a late window that share is folded back
into the curve before the deadline.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

HOUR = 3600.0
DAY = 24 * HOUR
DAY_TAU = 6 * HOUR
EARLY_TAU = 3 * DAY


@dataclass(frozen=True)
class ArrivalCurve:
    final_day_share: float = 0.86
    final_hour_share: float = 0.40
    surge_seconds: float = 600.0
    late_share: float = 0.03
    late_seconds: float = 900.0

    @property
    def _shares(self) -> tuple[float, float, float]:
        hour = min(self.final_hour_share, self.final_day_share)
        return hour, self.final_day_share - hour, 1.0 - self.final_day_share

    @property
    def hour_shape(self) -> tuple[float, float]:
        """(c, a) of the final hour's density c + a·exp(-u/tau), continuous with the day segment at 1 h."""
        hour, day, _ = self._shares
        c = day * _truncated_exp_pdf(0.0, DAY_TAU, DAY - HOUR)
        if c * HOUR >= hour:  # the final hour holds less than a flat continuation: flat
            return hour / HOUR, 0.0
        tau = self.surge_seconds
        return c, (hour - c * HOUR) / (tau * (1.0 - math.exp(-HOUR / tau)))

    def cdf(self, u: float) -> float:
        """Share of all on-time submissions that arrive within the final ``u`` seconds before the deadline."""
        if u <= 0:
            return 0.0
        _, day, early = self._shares
        c, a = self.hour_shape
        x = min(u, HOUR)
        total = c * x + a * self.surge_seconds * (1.0 - math.exp(-x / self.surge_seconds))
        if u > HOUR:
            total += day * _truncated_exp_cdf(min(u, DAY) - HOUR, DAY_TAU, DAY - HOUR)
        if u > DAY:
            total += early * (1.0 - math.exp(-(u - DAY) / EARLY_TAU))
        return total

    def density(self, u: float) -> float:
        """Share of on-time submissions per second arriving ``u`` seconds before the deadline."""
        if u < 0:
            return 0.0
        _, day, early = self._shares
        if u <= HOUR:
            c, a = self.hour_shape
            return c + a * math.exp(-u / self.surge_seconds)
        if u <= DAY:
            return day * _truncated_exp_pdf(u - HOUR, DAY_TAU, DAY - HOUR)
        return early * math.exp(-(u - DAY) / EARLY_TAU) / EARLY_TAU

    def still_to_come(self, u: float, late_window: float) -> float:
        """Share of all eventual submissions arriving after the moment ``u`` before the deadline.

        ``late_window`` is the cut-off minus the deadline; submissions end at the cut-off.
        """
        late = self.late_share if late_window > 0 else 0.0
        if u >= 0:
            return (1.0 - late) * self.cdf(u) + late
        if -u >= late_window:
            return 0.0
        return late * (1.0 - _truncated_exp_cdf(-u, self.late_seconds, late_window))

    def rate(self, u: float, late_window: float) -> float:
        """Share of all eventual submissions per second at the moment ``u`` before the deadline."""
        late = self.late_share if late_window > 0 else 0.0
        if u >= 0:
            return (1.0 - late) * self.density(u)
        if -u >= late_window:
            return 0.0
        return late * _truncated_exp_pdf(-u, self.late_seconds, late_window)


def _truncated_exp_cdf(x: float, tau: float, length: float) -> float:
    return (1.0 - math.exp(-x / tau)) / (1.0 - math.exp(-length / tau))


def _truncated_exp_pdf(x: float, tau: float, length: float) -> float:
    return math.exp(-x / tau) / (tau * (1.0 - math.exp(-length / tau)))


# Students may be behind the curve (fewer submitted than it expected by now); the forecast
# follows them, but at most this many times what the curve itself expects still to come.
# Unclipped, a class that submits less than expected made the rate explode at the deadline.
MAX_BEHIND = 2.0


@dataclass(frozen=True)
class DeadlineLoad:
    """Students due at one deadline (an assignment's, or the dates of their extensions).

    ``enrolled`` counts the students these dates apply to, ``submitted`` those of
    them who have submitted; they may hand in until ``cutoff`` (late after ``deadline``).
    """

    assignment_id: int
    deadline: float  # epoch seconds
    enrolled: int
    submitted: int
    submit_share: float = 1.0
    cutoff: float | None = None  # epoch seconds; None = the deadline (no late window)
    course_id: int | None = None
    # This course's own arrival curve (autoscaler.history learns it); None = the installation's default.
    curve: ArrivalCurve | None = None
    # Little history: the surge may be as sharp as this (seconds); the peak is sized for it too.
    sharpest_surge: float | None = None
    # This load's submitted count at past cycles, (epoch seconds, submitted), oldest first.
    observed: tuple[tuple[float, int], ...] = ()

    @property
    def late_window(self) -> float:
        return max(0.0, (self.cutoff if self.cutoff is not None else self.deadline) - self.deadline)

    def scale(self, now: float, curve: ArrivalCurve) -> float:
        """Expected eventual submissions per unit of the curve's share: remaining = scale x still_to_come.

        Each student submits at all with probability ``s`` (the submit share), at a
        time drawn from the curve. One who has not submitted by now still will with
        probability s·G / (1 - s + s·G), G the share of the curve still to come: that
        falls smoothly to zero at the cut-off, with no cliff once a set share has
        submitted. Relative to what the curve alone expects (s·enrolled·G) it is
        clipped at MAX_BEHIND.
        """
        g = curve.still_to_come(self.deadline - now, self.late_window)
        pending = max(0, self.enrolled - self.submitted)
        s = self.submit_share
        if g <= 0 or pending == 0:
            return 0.0
        prior = s * self.enrolled
        conditional = pending * s / (1.0 - s + s * g)
        return min(conditional, MAX_BEHIND * prior)

    def expected_remaining(self, now: float, curve: ArrivalCurve) -> float:
        return self.scale(now, curve) * curve.still_to_come(self.deadline - now, self.late_window)


@dataclass(frozen=True)
class Forecast:
    """Submissions expected over the next lead time, and the peak rate within it."""

    jobs: float
    peak_rate: float
    assignments: int


def forecast(loads: Iterable[DeadlineLoad], now: float, lead: float, curve: ArrivalCurve) -> Forecast:
    """Expected arrivals in [now, now + lead] from students who have not yet submitted.

    Each submission becomes one job on every step's queue, so this is also each
    pool's expected job count. Peaks of different assignments are summed. A load
    that carries its own (learned) curve is forecast with it, else with ``curve``;
    one with a ``sharpest_surge`` (little history) has its peak sized for that too.
    """
    jobs = 0.0
    peak = 0.0
    assignments: set[int] = set()
    default = curve
    for load in loads:
        curve = load.curve or default
        scale = load.scale(now, curve)
        if scale <= 0:
            continue
        u0 = load.deadline - now
        u1 = u0 - lead
        window = load.late_window
        assignments.add(load.assignment_id)
        expected = scale * (curve.still_to_come(u0, window) - curve.still_to_come(u1, window))
        rate = scale * max(curve.rate(u, window) for u in _probes(u1, u0))
        if load.sharpest_surge is not None and load.sharpest_surge < curve.surge_seconds:
            # Not known yet how sharp this class's surge is: pods must be up for the sharpest plausible one.
            # A class behind the curve may be a sharp surge still to come (or students who never will):
            # the hedge keeps the behind factor, as latency at the deadline is what students see.
            sharp = replace(curve, surge_seconds=load.sharpest_surge)
            rate = max(rate, load.scale(now, sharp) * max(sharp.rate(u, window) for u in _probes(u1, u0)))
        # Before the final hour every surge's rate is the day's: nothing for the fit to decide.
        fitted = fit_surge(load.observed, load.deadline, now) if load.observed and u0 > 0 and u1 <= HOUR else None
        if fitted is not None:
            # What this assignment's arrivals leave plausible: never more than the curve (and hedge) alone.
            late = scale * max((curve.rate(u, window) for u in _probes(u1, u0) if u < 0), default=0.0)
            rate = min(rate, max(late, _fitted_peak(load, fitted, now, u1, u0, curve)))
            expected = min(expected, rate * lead)
        jobs += expected
        peak += rate
    return Forecast(jobs=jobs, peak_rate=peak, assignments=len(assignments))


def _fitted_peak(load: DeadlineLoad, fitted: SurgeFit, now: float, u1: float, u0: float, curve: ArrivalCurve) -> float:
    """The highest rate in [u1, u0] of any surge the arrivals so far leave plausible.

    Each at most what that surge could bring if every student yet to submit did, on its shape: a surge
    that has not shown itself yet is bounded by that alone.
    """
    window = load.late_window
    pending = max(0, load.enrolled - load.submitted)
    peak = 0.0
    for k, tau in enumerate(fitted.taus):
        shaped = replace(curve, surge_seconds=tau)
        to_come = shaped.still_to_come(u0, window)
        if to_come <= 0:
            continue
        bound = pending / to_come * max(shaped.rate(u, window) for u in _probes(u1, u0))
        peak = max(peak, min(fitted.rate(k, u1), bound))
    return peak


def _probes(u1: float, u0: float) -> Sequence[float]:
    """Where the rate can peak inside [u1, u0]: its ends and each side of a segment edge."""
    edges = (0.0, HOUR, DAY)
    return [u1, u0] + [edge + eps for edge in edges for eps in (-1e-6, 1e-6) if u1 <= edge + eps <= u0]


# --- learning within the current assignment ---------------------------------------------------------------------
#
# Without history nobody knows how sharp this class's surge is, so the peak used to be sized for both the prior
# and a 2-minute surge (with the behind-the-curve factor) until the deadline. The arrivals so far this
# assignment tell more: a 10-minute surge shows its rise 20 minutes out, a 2-minute one a few minutes out, and
# once a rise is visible its height is known. Each cycle the submissions of the last hour are fitted with the
# final hour's shape, rate(u) = c + A·exp(-u / tau), for every tau on a grid; a tau the arrivals make unlikely
# is dropped, and for each one left the rate it lets come (A at its upper confidence bound) caps what that
# surge's hedge would size for. A surge not yet visible stays unconstrained: the hedge is kept for it.

TRACK_SECONDS = HOUR  # the arrivals fitted: this assignment's last hour of samples
MIN_TRACK_SECONDS = 600.0  # fewer than this many seconds of samples: no fit, the hedge as before
TAU_GRID = tuple(120.0 * (2 * HOUR / 120.0) ** (k / 23) for k in range(24))  # 2 min .. 2 h
PLAUSIBLE_LOG_LIKELIHOOD = 3.0  # a tau whose fit is this much less likely than the best is ruled out
UPPER_SIGMAS = 3.0  # A's upper bound: its estimate plus this many standard errors


@dataclass(frozen=True)
class SurgeFit:
    """Per plausible tau: the baseline c and the upper bound of the surge height A (submissions/s)."""

    taus: tuple[float, ...]
    baseline: tuple[float, ...]
    height: tuple[float, ...]

    def rate(self, k: int, u: float) -> float:
        return self.baseline[k] + self.height[k] * math.exp(-max(u, 0.0) / self.taus[k])


def fit_surge(samples: Sequence[tuple[float, int]], deadline: float, now: float) -> SurgeFit | None:
    """Fit c + A·exp(-u/tau) to the arrivals between successive samples (epoch seconds, submitted so far).

    Poisson counts, identity link, by iteratively reweighted least squares for each tau of the grid at
    once; None while there is too little to fit (then the forecast hedges as before).
    """
    recent = [(t, n) for t, n in samples if now - t <= TRACK_SECONDS and t <= deadline]
    if len(recent) < 3 or recent[-1][0] - recent[0][0] < MIN_TRACK_SECONDS:
        return None
    t = np.array([s[0] for s in recent], dtype=float)
    counts = np.diff(np.array([s[1] for s in recent], dtype=float)).clip(min=0.0)
    u_old, u_new = deadline - t[:-1], deadline - t[1:]
    taus = np.array(TAU_GRID)[:, None]
    x = np.broadcast_to(u_old - u_new, (len(TAU_GRID), len(counts)))  # the baseline's exposure per bin
    y = taus * (np.exp(-u_new / taus) - np.exp(-u_old / taus))  # the surge's, per unit of A
    c = np.full(len(TAU_GRID), counts.sum() / x[0].sum())
    a = np.zeros(len(TAU_GRID))
    for _ in range(6):
        lam = np.maximum(c[:, None] * x + a[:, None] * y, 1e-9)
        w = 1.0 / np.maximum(lam, 0.5)
        sxx, sxy, syy = (w * x * x).sum(1), (w * x * y).sum(1), (w * y * y).sum(1)
        sxd, syd = (w * x * counts).sum(1), (w * y * counts).sum(1)
        det = np.maximum(sxx * syy - sxy * sxy, 1e-300)
        a = (sxx * syd - sxy * sxd) / det
        c = (syy * sxd - sxy * syd) / det
        flat = a <= 0  # no surge under this tau: the baseline alone
        a = np.where(flat, 0.0, a)
        c = np.where(flat, sxd / sxx, c).clip(min=0.0)
    lam = np.maximum(c[:, None] * x + a[:, None] * y, 1e-9)
    log_likelihood = (counts * np.log(lam) - lam).sum(1)
    w = 1.0 / np.maximum(lam, 0.5)
    sxx, sxy, syy = (w * x * x).sum(1), (w * x * y).sum(1), (w * y * y).sum(1)
    det = np.maximum(sxx * syy - sxy * sxy, 1e-300)
    upper = a + UPPER_SIGMAS * np.sqrt(sxx / det)  # var(A) from the Fisher information
    keep = log_likelihood >= log_likelihood.max() - PLAUSIBLE_LOG_LIKELIHOOD
    return SurgeFit(
        tuple(float(v) for v in np.array(TAU_GRID)[keep]),
        tuple(float(v) for v in c[keep]),
        tuple(float(v) for v in upper[keep]),
    )
