"""Learn each course's arrival curve and submit share from its past assignments.

The shipped curve (settings: ``FINAL_DAY_SHARE``, ``FINAL_HOUR_SHARE``,
``SURGE_SECONDS``, ``LATE_*``) and ``SUBMIT_SHARE`` are only the prior of a
new installation. From the database the autoscaler reads, for the last
assignments whose cut-off has passed, when each student first submitted
(relative to the assignment's deadline) and how many of the enrolled students
submitted at all, and fits the same curve to that:

- submit share: submitters / enrolled students;
- final-day and final-hour shares: the share of on-time first submissions
  within 24 h and 1 h of the deadline;
- surge time constant: the maximum-likelihood ``surge_seconds`` of the final
  hour's density ``c + a·exp(-u / surge)`` (a grid search);
- late share and time constant: the share after the deadline (assignments
  with a late window only) and the mean delay of those.

Each estimate is blended with its prior, weighted by how many past
assignments it rests on: ``w = n / (n + PRIOR_ASSIGNMENTS)``. The
installation's fit has the shipped defaults as prior, each course's fit has
the other courses' (fitted the same way): a course with little history
follows the installation, one with a long history its own students.

Timestamps are fetched raw and all arithmetic happens here, in Python, so it
works the same on SQLite and PostgreSQL. The fit is redone at most once per
``REFIT_SECONDS`` (or when a course with a deadline ahead was not in the
last fit), and kept in the autoscaler's saved state, so a restart or a new
leader starts from it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.forecast import DAY, HOUR, TRACK_SECONDS, ArrivalCurve, DeadlineLoad
from core.models import Assignment, Enrolment, Extension, Submission

if TYPE_CHECKING:
    from autoscaler.state import StateStore
    from core.settings import AutoscalerSettings

log = logging.getLogger(__name__)

HISTORY_ASSIGNMENTS = 20  # the installation's most recent closed assignments
COURSE_ASSIGNMENTS = 8  # and each course's with a deadline ahead
PRIOR_ASSIGNMENTS = 3.0  # the prior weighs as much as this many past assignments
MIN_SUBMITTERS = 5  # an assignment with fewer first submissions tells nothing about the curve's shape
REFIT_SECONDS = 3600.0
# Until a course (or the installation) has this many past assignments, the forecast's peak is
# also sized for a surge this sharp: a prior that is too slow left 30,000 students' final
# two minutes queueing for 15-60 s (docs/autoscaling.md, benchmark); one too sharp costs a
# few minutes of spare pods.
CAUTIOUS_BELOW = 3
SHARPEST_SURGE = 120.0
SURGE_GRID = np.geomspace(30.0, 4 * HOUR, 64)


@dataclass(frozen=True)
class PastAssignment:
    """One closed assignment: its dates (epoch seconds), enrolled students, and each submitter's first upload."""

    assignment_id: int
    course_id: int
    deadline: float
    cutoff: float
    enrolled: int
    first_uploads: tuple[float, ...]

    @property
    def late_window(self) -> float:
        return max(0.0, self.cutoff - self.deadline)


@dataclass(frozen=True)
class Learned:
    """The arrival curve and submit share to forecast with, and how many past assignments of its own it rests on."""

    curve: ArrivalCurve
    submit_share: float
    assignments: int = 0

    def as_dict(self) -> dict[str, float]:
        c = self.curve
        return {
            "final_day_share": c.final_day_share,
            "final_hour_share": c.final_hour_share,
            "surge_seconds": c.surge_seconds,
            "late_share": c.late_share,
            "late_seconds": c.late_seconds,
            "submit_share": self.submit_share,
            "assignments": self.assignments,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Learned:
        curve = ArrivalCurve(
            float(data["final_day_share"]),
            float(data["final_hour_share"]),
            float(data["surge_seconds"]),
            float(data["late_share"]),
            float(data["late_seconds"]),
        )
        return cls(curve, float(data["submit_share"]), int(data.get("assignments", 0)))


def prior(section: AutoscalerSettings) -> Learned:
    """The shipped curve and submit share: what a new installation forecasts with."""
    s = section
    curve = ArrivalCurve(s.final_day_share, s.final_hour_share, s.surge_seconds, s.late_share, s.late_seconds)
    return Learned(curve, s.submit_share)


def fit(past: Sequence[PastAssignment], before: Learned) -> Learned:
    """``before`` moved towards what ``past`` shows, as far as the number of past assignments warrants."""
    enrolled = [p for p in past if p.enrolled > 0]
    if not enrolled:
        return replace(before, assignments=0)
    submitters = sum(min(len(p.first_uploads), p.enrolled) for p in enrolled)
    share = submitters / sum(p.enrolled for p in enrolled)
    submit_share = _blend(before.submit_share, share, len(enrolled))

    shaped = [p for p in enrolled if len(p.first_uploads) >= MIN_SUBMITTERS]
    curve = before.curve
    if shaped:
        u = np.concatenate([p.deadline - np.asarray(p.first_uploads, dtype=float) for p in shaped])
        on_time = u[u >= 0]
        n = len(shaped)
        if len(on_time):
            day = _blend(curve.final_day_share, float(np.mean(on_time < DAY)), n)
            hour = min(_blend(curve.final_hour_share, float(np.mean(on_time < HOUR)), n), day)
            surge = curve.surge_seconds
            if np.count_nonzero(on_time < HOUR) >= MIN_SUBMITTERS:
                surge = math.exp(_blend(math.log(surge), math.log(_surge_mle(on_time, day, hour)), n))
            curve = replace(
                curve, final_day_share=max(day, 1e-3), final_hour_share=max(hour, 1e-3), surge_seconds=surge
            )
        windowed = [p for p in shaped if p.late_window > 0]
        if windowed:
            w = np.concatenate([p.deadline - np.asarray(p.first_uploads, dtype=float) for p in windowed])
            late = -w[w < 0]
            late_share = _blend(curve.late_share, float(np.mean(w < 0)), len(windowed))
            late_seconds = curve.late_seconds
            if len(late):
                late_seconds = _blend(late_seconds, float(np.clip(np.mean(late), 60.0, DAY)), len(windowed))
            curve = replace(curve, late_share=min(late_share, 0.9), late_seconds=late_seconds)
    return Learned(curve, min(max(submit_share, 1e-3), 1.0), len(enrolled))


def _blend(prior_value: float, observed: float, assignments: int) -> float:
    weight = assignments / (assignments + PRIOR_ASSIGNMENTS)
    return (1.0 - weight) * prior_value + weight * observed


def _surge_mle(on_time: np.ndarray, day: float, hour: float) -> float:
    """The surge time constant under which the final hour's first uploads are likeliest.

    Each candidate's final-hour density holds the same share (``hour``), so the
    log-likelihoods compare directly.
    """
    u = on_time[on_time < HOUR]
    best, best_ll = float(SURGE_GRID[0]), -math.inf
    for tau in SURGE_GRID:
        c, a = ArrivalCurve(day, hour, float(tau)).hour_shape
        ll = float(np.sum(np.log(c + a * np.exp(-u / tau) + 1e-300)))
        if ll > best_ll:
            best, best_ll = float(tau), ll
    return best


async def past_assignments(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    course_ids: Collection[int],
    last: int = HISTORY_ASSIGNMENTS,
    per_course: int = COURSE_ASSIGNMENTS,
) -> list[PastAssignment]:
    """The last closed assignments (installation-wide, and of each named course) with each student's first upload.

    Students with an extension are left out (their dates differ); only
    enrolled students count, as in the forecast.
    """
    closed = Assignment.cutoff_at <= now
    columns = (Assignment.id, Assignment.course_id, Assignment.deadline, Assignment.cutoff_at)
    async with sessions() as session:
        rows = list(
            await session.execute(select(*columns).where(closed).order_by(Assignment.deadline.desc()).limit(last))
        )
        if course_ids:
            rank = func.row_number().over(partition_by=Assignment.course_id, order_by=Assignment.deadline.desc())
            ranked = (
                select(*columns, rank.label("rank"))
                .where(closed, Assignment.course_id.in_(list(course_ids)))
                .subquery()
            )
            rows += list(
                await session.execute(
                    select(ranked.c.id, ranked.c.course_id, ranked.c.deadline, ranked.c.cutoff_at).where(
                        ranked.c.rank <= per_course
                    )
                )
            )
        by_id = {row.id: row for row in rows}
        if not by_id:
            return []
        ids = list(by_id)
        enrolled: dict[int, int] = {
            course: count
            for course, count in (
                await session.execute(
                    select(Enrolment.course_id, func.count())
                    .where(Enrolment.course_id.in_({row.course_id for row in rows}), Enrolment.role == "student")
                    .group_by(Enrolment.course_id)
                )
            ).tuples()
        }
        student = and_(
            Enrolment.user_id == Extension.user_id,
            Enrolment.course_id == Assignment.course_id,
            Enrolment.role == "student",
        )
        extended: dict[int, int] = {
            assignment: count
            for assignment, count in (
                await session.execute(
                    select(Extension.assignment_id, func.count())
                    .join(Assignment, Assignment.id == Extension.assignment_id)
                    .join(Enrolment, student)
                    .where(Extension.assignment_id.in_(ids))
                    .group_by(Extension.assignment_id)
                )
            ).tuples()
        }
        has_extension = exists().where(
            Extension.assignment_id == Submission.assignment_id, Extension.user_id == Submission.user_id
        )
        firsts = await session.execute(
            select(Submission.assignment_id, func.min(Submission.received_at))
            .join(Assignment, Assignment.id == Submission.assignment_id)
            .join(
                Enrolment,
                and_(
                    Enrolment.user_id == Submission.user_id,
                    Enrolment.course_id == Assignment.course_id,
                    Enrolment.role == "student",
                ),
            )
            .where(Submission.assignment_id.in_(ids), ~has_extension)
            .group_by(Submission.assignment_id, Submission.user_id)
        )
        uploads: dict[int, list[float]] = {}
        for assignment, first in firsts.tuples():
            uploads.setdefault(assignment, []).append(_epoch(first))
    return [
        PastAssignment(
            assignment_id=row.id,
            course_id=row.course_id,
            deadline=_epoch(row.deadline),
            cutoff=_epoch(row.cutoff_at),
            enrolled=max(0, enrolled.get(row.course_id, 0) - extended.get(row.id, 0)),
            first_uploads=tuple(uploads.get(row.id, ())),
        )
        for row in by_id.values()
    ]


def _epoch(moment: datetime | str) -> float:
    if isinstance(moment, str):  # an aggregate over a datetime column, on a driver that leaves it as text
        moment = datetime.fromisoformat(moment)
    # SQLite hands back naive datetimes: they are UTC, as everything this app stores.
    return moment.replace(tzinfo=UTC).timestamp() if moment.tzinfo is None else moment.timestamp()


class HistoryLearner:
    """The fits per course and installation-wide, refitted at most hourly and kept in the saved state."""

    def __init__(self, base: Learned, refit_seconds: float = REFIT_SECONDS) -> None:
        self.prior = base
        self.refit_seconds = refit_seconds
        self.installation = base
        self.courses: dict[int, Learned] = {}
        self.fitted_at: float | None = None
        self._restored = False
        # Each open load's submitted count at past cycles (by assignment and deadline), for the forecast's fit.
        self.tracks: dict[tuple[int, float], list[tuple[float, int]]] = {}

    def for_course(self, course_id: int | None) -> Learned:
        return self.courses.get(course_id, self.installation) if course_id is not None else self.installation

    def apply(self, loads: Sequence[DeadlineLoad], now: float | None = None) -> list[DeadlineLoad]:
        """Each load with its course's learned curve and submit share, and (given ``now``) its arrivals so far."""
        if now is not None:
            self.track(loads, now)
        out = []
        for load in loads:
            learned = self.for_course(load.course_id)
            sharpest = SHARPEST_SURGE if learned.assignments < CAUTIOUS_BELOW else None
            observed = tuple(self.tracks.get((load.assignment_id, load.deadline), ()))
            out.append(
                replace(
                    load,
                    curve=learned.curve,
                    submit_share=learned.submit_share,
                    sharpest_surge=sharpest,
                    observed=observed,
                )
            )
        return out

    def track(self, loads: Sequence[DeadlineLoad], now: float) -> None:
        """Record each load's submitted count now; forget loads no longer open and samples older than the fit uses."""
        tracks: dict[tuple[int, float], list[tuple[float, int]]] = {}
        for load in loads:
            key = (load.assignment_id, load.deadline)
            samples = [s for s in self.tracks.get(key, []) if now - TRACK_SECONDS - 60.0 <= s[0] < now]
            if samples and samples[-1][1] > load.submitted:  # fewer than before (rows deleted): start again
                samples = []
            samples.append((now, load.submitted))
            tracks[key] = samples
        self.tracks = tracks

    def stale(self, now: float, course_ids: Collection[int]) -> bool:
        if self.fitted_at is None or now - self.fitted_at >= self.refit_seconds or now < self.fitted_at:
            return True
        return not set(course_ids) <= set(self.courses)

    def refit(self, past: Sequence[PastAssignment], course_ids: Collection[int], now: float) -> None:
        self.installation = fit(past, self.prior)
        mine: dict[int, list[PastAssignment]] = {}
        for p in past:
            mine.setdefault(p.course_id, []).append(p)
        # A course's prior is what the other courses show: its own assignments must not count twice.
        self.courses = {}
        for course in set(course_ids) | set(mine):
            if course not in mine:
                self.courses[course] = self.installation
                continue
            others = fit([p for p in past if p.course_id != course], self.prior)
            self.courses[course] = fit(mine[course], others)
        self.fitted_at = now

    async def update(
        self,
        sessions: async_sessionmaker[AsyncSession],
        store: StateStore | None,
        now: float,
        loads: Sequence[DeadlineLoad],
    ) -> list[DeadlineLoad]:
        """Refit if due (restoring the saved fit first), then the loads with what was learned.

        A failing database or Redis keeps the fit in hand (the prior at worst): never the cycle's problem.
        """
        course_ids = {load.course_id for load in loads if load.course_id is not None}
        if not self._restored and store is not None:
            saved = await store.load_history()
            self._restored = True
            if saved is not None:
                self.restore(saved)
        if self.stale(now, course_ids):
            try:
                past = await past_assignments(sessions, datetime.fromtimestamp(now, UTC), course_ids)
            except Exception:
                log.exception("past assignments unreadable; forecasting with the curve in hand")
            else:
                self.refit(past, course_ids, now)
                log.info(
                    "arrival curves learned from past assignments",
                    extra={"installation": self.installation.as_dict(), "courses": len(self.courses)},
                )
                if store is not None:
                    await store.save_history(self.state())
        return self.apply(loads, now)

    def state(self) -> dict[str, Any]:
        return {
            "fitted_at": self.fitted_at,
            "installation": self.installation.as_dict(),
            "courses": {str(course): learned.as_dict() for course, learned in self.courses.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            installation = Learned.from_dict(state["installation"])
            courses = {int(course): Learned.from_dict(value) for course, value in state["courses"].items()}
            fitted_at = float(state["fitted_at"])
        except (KeyError, TypeError, ValueError, AttributeError):
            log.warning("saved arrival curves unreadable; fitting afresh")
            return
        self.installation, self.courses, self.fitted_at = installation, courses, fitted_at
