"""Deadline simulation of the shipped autoscaler against a clairvoyant oracle and a KEDA-like reactive policy.

    python -m bench.autoscale            # the full sweep (~40 cells), table, plots into docs/img/
    python -m bench.autoscale --quick    # four cells, for a smoke test

What runs is the shipped configuration: ``core.settings.Settings()`` with its
defaults (caps, drain-rate defaults, submit share, curve prior, headroom),
only ``pod_start_seconds`` set to the cell's true pod start, as an operator
would. Our policy is the autoscaler loop's own code: ``RateMeter`` learns each
pool's service time online from the completed and busy counters the
simulated workers report, ``HistoryLearner`` fits each course's curve and
submit share from past assignments (drawn from the same truth: "ours"), or
has no history at all ("ours, new installation": the shipped prior), and
``forecast``/``decide`` size the pools every 5 s. A fail-over restores the
state through ``PoolState``'s JSON, as the real store does.

The load is discrete: each student who submits uploads once, at a time drawn
from the cell's true arrival curve; each upload is one job on scan → store →
similarity, admin, receipt, thumbnail, each job with its own lognormal
service time (mean from bench/pipeline.py's results when it wrote them, CV
from the same, else 0.5). Each pool is a FIFO multi-server queue whose
servers are its ready replicas x slots (a worker's max_jobs for io pools, 1
for cpu pools); pods take the pod start from being requested to taking jobs
and are paid for from the request; a pod scaled down finishes its running
jobs. Exact event order within a pool; the control loop acts on 5 s ticks.
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from autoscaler.forecast import DAY, HOUR, ArrivalCurve, DeadlineLoad, forecast
from autoscaler.history import COURSE_ASSIGNMENTS, HistoryLearner, PastAssignment
from autoscaler.history import prior as history_prior
from autoscaler.main import pool_limits, pool_slots, upstream_steps
from autoscaler.policy import CounterSample, PoolInputs, Recommendation, decide
from autoscaler.sources import RateMeter
from autoscaler.state import PoolState
from core.keys import TASKS
from core.pipeline import STEPS_BY_NAME
from core.settings import AutoscalerSettings, Settings

TICK = 5  # seconds: the shipped interval; every event time is binned on it
DEADLINE = 0.0  # time 0 is the (last) deadline; negative before it
AFTER = 30 * 60  # costs are counted up to this long after the deadline
COST_FROM = -3 * HOUR  # ... from this long before it
DEFAULT_SERVICE = {"scan": 0.25, "store": 0.17, "similarity": 1.0, "admin": 0.5, "receipt": 0.25, "thumbnail": 0.5}
DEFAULT_CV = 0.5
RESULTS = Path(__file__).parent / "results" / "pipeline.json"
POOLS = ("scan", "store", "similarity", "admin", "receipt", "thumbnail")
LEAVES = (2, 3, 4, 5)
assert set(POOLS) == set(TASKS)
PAST_ASSIGNMENTS = COURSE_ASSIGNMENTS  # the history "ours" learns from, per course

# KEDA-like: HPA on the ZCARD of each queue (ready + running jobs).
HPA_SYNC = 15
HPA_TOLERANCE = 0.1
HPA_STABILISATION = 300
KEDA_TARGET_SECONDS = 5.0  # listLength per replica = what one replica clears in 5 s


def service_model() -> tuple[dict[str, float], float, str]:
    """Mean service seconds per step and their CV: bench/pipeline.py's results where present."""
    means, cv, source = dict(DEFAULT_SERVICE), DEFAULT_CV, "declared defaults, CV 0.5 (stated default)"
    if RESULTS.exists():
        data = json.loads(RESULTS.read_text())
        measured_cv = data.get("service_cv")
        if isinstance(measured_cv, int | float) and measured_cv > 0:
            cv = float(measured_cv)
        sigma2 = math.log(1 + cv**2)
        medians = {s: float(v) for s, v in (data.get("service_seconds_p50") or {}).items() if s in means and v > 0}
        means.update({s: m * math.exp(sigma2 / 2) for s, m in medians.items()})  # a lognormal's mean from its median
        if medians or measured_cv:
            source = f"bench/pipeline.py ({len(medians)} steps measured), CV {cv:g}" + (
                "" if measured_cv else " (stated default: pipeline.json has no spread)"
            )
        else:
            source = "declared defaults (bench/results/pipeline.json holds no measurements), CV 0.5 (stated default)"
    return means, cv, source


MEANS, CV, SERVICE_SOURCE = service_model()
SVC = np.array([MEANS[p] for p in POOLS])


# --- the load -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    students: int
    final_hour_share: float = 0.4
    surge_seconds: float = 120.0
    pod_start: float = 60.0
    submit_share: float = 0.95
    shape: str = "curve"  # "curve": the prior's family with this cell's shares; "rising": linear over the last day
    apart: float | None = None  # two assignments (half the students each), the first due this many seconds earlier
    failover: float | None = None  # a new leader takes over this many seconds before the deadline
    name: str = ""

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        return (
            f"{self.students:,} / {self.final_hour_share:.0%} final hour / tau {self.surge_seconds / 60:g} min "
            f"/ pod {self.pod_start:g} s"
        )

    @property
    def seed_key(self) -> tuple[Any, ...]:
        """Everything that shapes the arrivals: a fail-over cell sees the same arrivals as its twin."""
        return (self.students, self.final_hour_share, self.surge_seconds, self.submit_share, self.shape, self.apart)

    @property
    def start(self) -> float:
        return -DAY if self.shape == "rising" else -6 * HOUR

    def true_cdf(self) -> Callable[[np.ndarray], np.ndarray]:
        """Share of on-time submissions within the final u seconds."""
        if self.shape == "rising":
            # 86% over the last day at a density rising linearly to the deadline, the rest over days before.
            def rising(u: np.ndarray) -> np.ndarray:
                day = np.clip(u, 0, DAY) / DAY
                early = np.where(u > DAY, 1 - np.exp(-(u - DAY) / (3 * DAY)), 0.0)
                return np.asarray(0.86 * (1 - (1 - day) ** 2) + 0.14 * early, dtype=float)

            return rising
        curve = ArrivalCurve(0.86, self.final_hour_share, self.surge_seconds, late_share=0.0)
        return np.vectorize(curve.cdf, otypes=[float])


U_GRID = np.concatenate(([0.0], np.geomspace(0.5, 30 * DAY, 4000)))


def draw_before_deadline(cell: Cell, count: int, rng: np.random.Generator) -> np.ndarray:
    """Seconds before the deadline of `count` first uploads, drawn from the cell's true curve."""
    cdf = cell.true_cdf()(U_GRID)
    return np.asarray(np.interp(rng.random(count) * cdf[-1], cdf, U_GRID), dtype=float)


@dataclass
class Load:
    """One cell's submissions: upload times (sorted), course of each, service times per step."""

    uploads: np.ndarray
    course: np.ndarray
    service: np.ndarray  # (n, pools)
    courses: dict[int, tuple[float, int, int]]  # course -> (deadline, enrolled, submitted before the simulation)
    past: list[PastAssignment]


def make_load(cell: Cell, seed: int) -> Load:
    rng = np.random.default_rng(seed)
    plan = (
        [(1, DEADLINE, cell.students)]
        if cell.apart is None
        else [
            (1, DEADLINE - cell.apart, cell.students // 2),
            (2, DEADLINE, cell.students - cell.students // 2),
        ]
    )
    uploads, courses, info, past = [], [], {}, []
    for course, deadline, students in plan:
        u = draw_before_deadline(cell, rng.binomial(students, cell.submit_share), rng)
        at = deadline - u
        inside = at >= cell.start
        uploads.append(at[inside])
        courses.append(np.full(int(inside.sum()), course))
        info[course] = (deadline, students, int((~inside).sum()))
        for k in range(PAST_ASSIGNMENTS):  # the same course's earlier terms, drawn from the same truth
            old = -(k + 1) * 7 * DAY
            first = old - draw_before_deadline(cell, rng.binomial(students, cell.submit_share), rng)
            past.append(PastAssignment(100 * course + k, course, old, old, students, tuple(first.tolist())))
    times = np.concatenate(uploads)
    order = np.argsort(times, kind="stable")
    sigma = math.sqrt(math.log(1 + CV**2))
    service = np.exp(rng.normal(np.log(SVC) - sigma**2 / 2, sigma, size=(len(times), len(POOLS))))
    return Load(times[order], np.concatenate(courses)[order], service, info, past)


# --- the fleet and the queues ---------------------------------------------------------------------------------


class Fleet:
    """Replicas per pool: requested pods take `pod_start` to take jobs; a scale-down cancels starting pods first."""

    def __init__(self, caps: list[int], pod_start: float) -> None:
        self.ready = [1] * len(POOLS)
        self.paid = [1] * len(POOLS)
        self.pending: list[list[tuple[float, int]]] = [[] for _ in POOLS]
        self.pod_start = pod_start
        self.caps = caps

    def set(self, pool: int, replicas: int, now: float) -> None:
        have = self.paid[pool]
        if replicas > have:
            self.pending[pool].append((now + self.pod_start, replicas - have))
        elif replicas < have:
            drop = have - replicas
            while drop and self.pending[pool]:
                due, n = self.pending[pool].pop()
                if n > drop:
                    self.pending[pool].append((due, n - drop))
                    drop = 0
                else:
                    drop -= n
            self.ready[pool] -= drop
        self.paid[pool] = replicas

    def advance(self, now: float) -> None:
        for pool, queue in enumerate(self.pending):
            if queue and queue[0][0] <= now:
                self.ready[pool] += sum(n for due, n in queue if due <= now)
                self.pending[pool] = [(due, n) for due, n in queue if due > now]


@dataclass
class Observation:
    """What the loop reads at a tick, per pool (as the Lua script and the workers' counters give it)."""

    now: float
    ready: list[int]
    running: list[int]
    completed: list[int]
    busy: list[float]
    uploaded: dict[int, int]  # course -> submissions so far (the database)


Controller = Callable[[Observation, Fleet], None]


@dataclass
class Run:
    latencies: np.ndarray
    paid: np.ndarray  # (ticks, pools) replicas paid for over each tick
    waiting: np.ndarray  # (ticks,) jobs waiting in all queues
    times: np.ndarray  # (ticks,) start of each tick
    extra: dict[str, float] = field(default_factory=dict)

    def replica_minutes(self) -> float:
        inside = (self.times >= COST_FROM) & (self.times < DEADLINE + AFTER)
        return float(self.paid[inside].sum() * TICK / 60)

    def peak(self) -> int:
        return int(self.paid.sum(axis=1).max())

    def p95(self) -> float:
        return float(np.percentile(self.latencies, 95))


def simulate(
    load: Load,
    cell: Cell,
    slots: list[int],
    caps: list[int],
    controller: Controller | None = None,
    every: int = TICK,
    plan: np.ndarray | None = None,
) -> Run:
    """Every submission through the pools, tick by tick; `plan` (ticks, pools) fixes ready replicas instead."""
    start = cell.start
    ticks = int((DEADLINE + 3 * HOUR - start) // TICK)
    n = len(load.uploads)
    svc = load.service
    uploads = load.uploads
    pending: list[list[tuple[float, int]]] = [[] for _ in POOLS]
    pending[0] = [(float(t), i) for i, t in enumerate(uploads)]  # sorted: already a heap
    servers: list[list[float]] = [[start] * slots[p] for p in range(len(POOLS))]
    arrived = np.zeros((ticks + 1, len(POOLS)), dtype=np.int64)
    started = np.zeros((ticks + 1, len(POOLS)), dtype=np.int64)
    completed = np.zeros((ticks + 1, len(POOLS)), dtype=np.int64)
    busy = np.zeros((ticks + 1, len(POOLS)))
    arrived[:, 0] = np.bincount(np.minimum(((uploads - start) // TICK).astype(int), ticks), minlength=ticks + 1)
    done = np.full((n, len(POOLS)), np.nan)
    fleet = Fleet(caps, cell.pod_start)
    paid = np.zeros((ticks, len(POOLS)))
    waiting = np.zeros(ticks)
    courses = sorted(load.courses)
    by_course = {c: np.sort(uploads[load.course == c]) for c in courses}
    cum = [np.zeros(len(POOLS), dtype=np.int64) for _ in range(3)]
    cum_busy = np.zeros(len(POOLS))
    remaining = n * len(POOLS)
    k = 0
    for k in range(ticks):
        t0 = start + k * TICK
        t1 = t0 + TICK
        if k:
            cum[0] += arrived[k - 1]
            cum[1] += started[k - 1]
            cum[2] += completed[k - 1]
            cum_busy += busy[k - 1]
        if plan is not None:
            fleet.ready = [int(r) for r in plan[k]]
        else:
            fleet.advance(t0)
            if controller is not None and k % (every // TICK) == 0:
                observed = Observation(
                    t0,
                    [int(v) for v in cum[0] - cum[1]],
                    [int(v) for v in cum[1] - cum[2]],
                    [int(v) for v in cum[2]],
                    [float(v) for v in cum_busy],
                    {c: int(np.searchsorted(by_course[c], t0)) + load.courses[c][2] for c in courses},
                )
                controller(observed, fleet)
        paid[k] = fleet.paid if plan is None else plan[k]
        waiting[k] = float((cum[0] - cum[1]).sum())
        for p in range(len(POOLS)):
            # Servers: ready replicas x slots. Going down, idle slots go first; running jobs finish.
            want = fleet.ready[p] * slots[p]
            have = servers[p]
            while len(have) < want:
                have.append(t0)
            while len(have) > want:
                heapq.heappop(have)
            queue = have
            jobs = pending[p]
            binned_start, binned_done, binned_busy = started[:, p], completed[:, p], busy[:, p]
            col = svc[:, p]
            while jobs and queue:
                arrival, i = jobs[0]
                free = queue[0]
                begin = arrival if arrival > free else free
                if begin >= t1:
                    break
                heapq.heappop(jobs)
                s = col[i]
                finish = begin + s
                heapq.heapreplace(queue, finish)
                binned_start[k] += 1
                fk = min(int((finish - start) // TICK), ticks)
                binned_done[fk] += 1
                binned_busy[fk] += s
                done[i, p] = finish
                remaining -= 1
                if p == 0:
                    heapq.heappush(pending[1], (finish, i))
                    arrived[fk, 1] += 1
                elif p == 1:
                    for leaf in LEAVES:
                        heapq.heappush(pending[leaf], (finish, i))
                        arrived[fk, leaf] += 1
        if remaining == 0 and t0 > DEADLINE + AFTER:
            break
    last = k + 1
    latencies = done[:, LEAVES].max(axis=1) - uploads
    if remaining:
        latencies[np.isnan(done[:, LEAVES]).any(axis=1)] = math.inf  # never finished inside the simulated window
    return Run(latencies, paid[:last], waiting[:last], start + np.arange(last) * TICK)


# --- the policies ---------------------------------------------------------------------------------------------


def shipped_settings(pod_start: float) -> Settings:
    """The shipped defaults; only the pod start is the installation's own."""
    return Settings(autoscaler=AutoscalerSettings(pod_start_seconds=pod_start))


class OurLoop:
    """What autoscaler.main.Autoscaler does each cycle, minus the I/O: the real meters, forecast, decide."""

    def __init__(self, settings: Settings, load: Load, learner: HistoryLearner) -> None:
        section = settings.autoscaler
        self.settings = settings
        self.load = load
        self.learner = learner
        self.lead = section.lead
        self.limits = [pool_limits(settings, p) for p in POOLS]
        self.meters = []
        for p in POOLS:
            cpu = STEPS_BY_NAME[p].profile == "cpu"
            default = section.default_drain_rate_cpu if cpu else section.default_drain_rate_io
            self.meters.append(
                RateMeter(default, section.pool(p).drain_rate_per_replica, pool_slots(settings, p), cpu_bound=cpu)
            )
        self.history: list[tuple[Recommendation, ...]] = [() for _ in POOLS]
        self.fresh = set(range(len(POOLS)))
        self.upstream = [[POOLS.index(u) for u in upstream_steps(p)] for p in POOLS]
        self.default_curve = history_prior(section).curve
        self.submit_share = section.submit_share

    def __call__(self, seen: Observation, fleet: Fleet) -> None:
        now = seen.now
        loads = [
            DeadlineLoad(
                course, deadline, enrolled, seen.uploaded[course], self.submit_share, cutoff=deadline, course_id=course
            )
            for course, (deadline, enrolled, _) in self.load.courses.items()
            if deadline > now
        ]
        ahead = forecast(self.learner.apply(loads, now), now, self.lead, self.default_curve)
        for i, task in enumerate(POOLS):
            meter = self.meters[i]
            queued = seen.ready[i] + seen.running[i]
            meter.observe(
                CounterSample(now, seen.completed[i], queued, seen.ready[i], busy=seen.busy[i], occupied=seen.busy[i])
            )
            current = fleet.paid[i]
            if i in self.fresh:
                self.history[i] = (Recommendation(now, current),)
                self.fresh.discard(i)
            inputs = PoolInputs(
                task=task,
                ready=seen.ready[i],
                running=seen.running[i],
                deferred=0,
                current_replicas=current,
                drain_rate=meter.drain_rate,
                arrival_rate=meter.arrival_rate,
                upstream=sum(seen.ready[j] + seen.running[j] for j in self.upstream[i]),
                forecast_jobs=ahead.jobs,
                forecast_peak_rate=ahead.peak_rate,
                slots=meter.slots,
            )
            decision = decide(inputs, self.limits[i], now, self.history[i])
            self.history[i] = decision.history
            if decision.desired != current:
                fleet.set(i, decision.desired, now)

    def saved(self) -> tuple[dict[str, str], dict[str, Any]]:
        """The state the real loop writes to Redis at the end of a cycle (as JSON)."""
        pools = {task: PoolState(self.meters[i].state(), self.history[i]).dumps() for i, task in enumerate(POOLS)}
        return pools, json.loads(json.dumps(self.learner.state()))

    def take_over(self, saved: tuple[dict[str, str], dict[str, Any]]) -> None:
        pools, learned = saved
        for i, task in enumerate(POOLS):
            state = PoolState.loads(pools[task])
            self.meters[i].restore(state.meter)
            self.history[i] = state.history
            self.fresh.discard(i)
        if learned.get("fitted_at") is not None:
            self.learner.restore(learned)


class FailOver:
    """The leader dies (its last cycle a lease duration before `at`); a new one takes over at `at`."""

    def __init__(self, old: OurLoop, new: OurLoop, at: float, lease: float) -> None:
        self.old, self.new, self.at, self.lease = old, new, at, lease
        self.saved: tuple[dict[str, str], dict[str, Any]] | None = None

    def __call__(self, seen: Observation, fleet: Fleet) -> None:
        if seen.now < self.at - self.lease:
            self.old(seen, fleet)
            self.saved = self.old.saved()
        elif seen.now >= self.at:
            if self.saved is not None:
                self.new.take_over(self.saved)
                self.saved = None
            self.new(seen, fleet)


class KedaLike:
    """KEDA redis scaler + HPA: desired = ceil(ZCARD / listLength), 10% tolerance, 2x/+4 up, 300 s down."""

    def __init__(self, slots: list[int], caps: list[int]) -> None:
        self.target = [KEDA_TARGET_SECONDS * slots[p] / SVC[p] for p in range(len(POOLS))]
        self.caps = caps
        self.recommendations: list[list[tuple[float, int]]] = [[] for _ in POOLS]

    def __call__(self, seen: Observation, fleet: Fleet) -> None:
        now = seen.now
        for i in range(len(POOLS)):
            current = fleet.paid[i]
            metric = seen.ready[i] + seen.running[i]
            ratio = metric / (self.target[i] * max(current, 1))
            desired = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(metric / self.target[i])
            desired = min(max(desired, 1), self.caps[i])
            window = [r for r in self.recommendations[i] if now - r[0] < HPA_STABILISATION] + [(now, desired)]
            self.recommendations[i] = window
            if desired < current:
                desired = min(current, max(r for _, r in window))
            desired = min(desired, max(2 * current, current + 4))
            if desired != current:
                fleet.set(i, desired, now)


def oracle_plan(load: Load, cell: Cell, slots: list[int], caps: list[int]) -> tuple[np.ndarray, np.ndarray, bool]:
    """Knows every upload and service time: the slots the no-wait schedule keeps busy (±5 s), booted a pod start ahead.

    Returns ready replicas and paid replicas per tick, and whether a cap held it back.
    """
    start = cell.start
    seconds = int(DEADLINE + 3 * HOUR - start)
    ticks = seconds // TICK
    begin = np.zeros((len(load.uploads), len(POOLS)))
    begin[:, 0] = load.uploads
    begin[:, 1] = begin[:, 0] + load.service[:, 0]
    for leaf in LEAVES:
        begin[:, leaf] = begin[:, 1] + load.service[:, 1]
    end = begin + load.service
    grid = start + np.arange(seconds + 1, dtype=float)
    need = np.zeros((seconds, len(POOLS)))
    for p in range(len(POOLS)):
        # Busy slots of the no-wait schedule, averaged over each second (exact: integrals of ramps).
        busy = _ramp_sum(begin[:, p], grid) - _ramp_sum(end[:, p], grid)
        need[:, p] = np.diff(busy)
    padded = np.pad(need[:seconds], ((5, 5), (0, 0)), mode="edge")
    busiest = np.lib.stride_tricks.sliding_window_view(padded, 11, axis=0).max(axis=-1)
    wanted = np.maximum(np.ceil(busiest / np.array(slots) - 1e-9), 1)
    capped = bool((wanted > np.array(caps)).any())
    ready_s = np.minimum(wanted, np.array(caps))
    per_tick = ready_s[: ticks * TICK].reshape(ticks, TICK, len(POOLS)).max(axis=1)
    ahead = max(1, int(cell.pod_start // TICK))
    padded_ticks = np.pad(per_tick, ((0, ahead), (0, 0)), mode="edge")
    paid = np.lib.stride_tricks.sliding_window_view(padded_ticks, ahead + 1, axis=0).max(axis=-1)
    return per_tick, paid, capped


def _ramp_sum(points: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Σ max(0, t - x) over the points x, at each t of the grid."""
    ordered = np.sort(points)
    below = np.searchsorted(ordered, grid)
    sums = np.concatenate(([0.0], np.cumsum(ordered)))
    return grid * below - sums[below]


# --- one cell ---------------------------------------------------------------------------------------------------


POLICIES = ("ours", "ours, new installation", "keda-like", "oracle")


def run_cell(cell: Cell, seed: int, policies: tuple[str, ...] = POLICIES) -> tuple[dict[str, Run], np.ndarray, bool]:
    load = make_load(cell, seed + zlib.crc32(repr(cell.seed_key).encode()))
    settings = shipped_settings(cell.pod_start)
    slots = [pool_slots(settings, p) for p in POOLS]
    caps = [settings.autoscaler.pool(p).max_replicas for p in POOLS]
    runs: dict[str, Run] = {}
    floor = load.service[:, 0] + load.service[:, 1] + load.service[:, LEAVES].max(axis=1)
    capped = False
    for name in policies:
        if name == "oracle":
            ready, paid, capped = oracle_plan(load, cell, slots, caps)
            run = simulate(load, cell, slots, caps, plan=ready)
            run.paid = paid[: len(run.paid)]
        elif name == "keda-like":
            run = simulate(load, cell, slots, caps, KedaLike(slots, caps), every=HPA_SYNC)
        else:

            def loop(name: str = name) -> OurLoop:
                learner = HistoryLearner(history_prior(settings.autoscaler))
                if name == "ours":
                    learner.refit(load.past, set(load.courses), cell.start)
                return OurLoop(settings, load, learner)

            controller: Controller = loop()
            if cell.failover is not None:
                controller = FailOver(
                    loop(), loop(), DEADLINE - cell.failover, settings.autoscaler.lease_duration_seconds
                )
            run = simulate(load, cell, slots, caps, controller)
        runs[name] = run
    return runs, floor, capped


# --- the report -------------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    cell: Cell
    policy: str
    p95: float
    floor: float
    oracle_p95: float
    capped: bool
    cost: float
    oracle_cost: float
    peak: int
    oracle_peak: int
    failures: list[str] = field(default_factory=list)

    @property
    def p95_ratio(self) -> float:
        return self.p95 / self.floor

    @property
    def limit(self) -> float:
        return 1.25 * (max(self.oracle_p95, self.floor) if self.capped else self.floor)


def judge(cell: Cell, name: str, runs: dict[str, Run], floor: np.ndarray, capped: bool) -> Verdict:
    run, oracle = runs[name], runs["oracle"]
    v = Verdict(
        cell,
        name,
        run.p95(),
        float(np.percentile(floor, 95)),
        oracle.p95(),
        capped,
        run.replica_minutes(),
        oracle.replica_minutes(),
        run.peak(),
        oracle.peak(),
    )
    if v.p95 > v.limit:
        v.failures.append(f"p95 {v.p95:.2f}s > {v.limit:.2f}s")
    if v.cost > 1.10 * v.oracle_cost:
        v.failures.append(f"replica-min {v.cost / v.oracle_cost:.2f}x oracle")
    if cell.submit_share < 0.95 and v.peak > 1.2 * v.oracle_peak:
        v.failures.append(f"peak {v.peak} > 1.2x oracle's {v.oracle_peak}")
    return v


def fmt_p95(value: float) -> str:
    return "never" if math.isinf(value) else f"{value:,.1f}" if value >= 100 else f"{value:.2f}"


def row(v: Verdict, keda: Verdict, note: str = "") -> str:
    ok = "pass" if not v.failures else "FAIL: " + "; ".join(v.failures)
    return (
        f"| {v.cell.label} | {v.policy} | {v.floor:.2f} | {fmt_p95(v.p95)} | {v.p95_ratio:.2f} | "
        f"{fmt_p95(v.oracle_p95)}{' (capped)' if v.capped else ''} | {fmt_p95(keda.p95)} | "
        f"{v.cost / v.oracle_cost:.2f} | {keda.cost / v.oracle_cost:.2f} | {v.peak} / {v.oracle_peak} / {keda.peak} | "
        f"{ok}{note} |"
    )


HEADER = (
    "| cell | policy | floor p95 s | p95 s | ÷ floor | oracle p95 | keda-like p95 | replica-min ÷ oracle "
    "| keda-like ÷ oracle | peak replicas ours / oracle / keda | targets |\n"
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
)


def sweep(quick: bool) -> list[Cell]:
    if quick:
        return [
            Cell(3_000, 0.4, 600, 60),
            Cell(30_000, 0.6, 120, 120),
            Cell(30_000, 0.4, 120, 60),
            Cell(30_000, 0.4, 120, 60, failover=30.0, name="30,000 / fail-over 30 s before the deadline"),
        ]
    cells = [
        Cell(students, share, tau, pod)
        for students in (3_000, 30_000)
        for share in (0.2, 0.4, 0.6)
        for tau in (600.0, 120.0)
        for pod in (30.0, 60.0, 120.0)
    ]
    return [
        *cells,
        Cell(30_000, 0.4, 120, 60, submit_share=0.9, name="30,000 / 90% of enrolled submit"),
        Cell(30_000, 0.4, 120, 60, shape="rising", name="30,000 / rising through the last day, no surge"),
        Cell(30_000, 0.4, 120, 60, apart=600.0, name="30,000 / two assignments due 10 min apart"),
        Cell(30_000, 0.4, 120, 60, failover=30.0, name="30,000 / fail-over 30 s before the deadline"),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="four cells only")
    parser.add_argument("--only", default="", help="only the cells whose label contains this")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--plots", default="docs/img", help="where PNG plots go ('' for none)")
    args = parser.parse_args()
    settings = shipped_settings(60)
    print(f"service times: {SERVICE_SOURCE}: " + ", ".join(f"{p} {MEANS[p]:.2f}s" for p in POOLS), flush=True)
    section = settings.autoscaler
    print(
        "shipped settings: caps "
        + ", ".join(f"{p} {section.pool(p).max_replicas}" for p in POOLS)
        + f"; submit share {section.submit_share}; curve prior {section.final_hour_share:.0%} final hour, "
        f"tau {section.surge_seconds:g}s; drain rates learned (defaults io {section.default_drain_rate_io:g}/s, "
        f"cpu {section.default_drain_rate_cpu:g}/s); slots io {settings.worker.max_jobs}, cpu {section.cpu_slots}",
        flush=True,
    )
    print(HEADER, flush=True)
    began = time.perf_counter()
    verdicts: list[Verdict] = []
    twins: dict[tuple[Any, ...], float] = {}
    plotted: dict[str, Run] | None = None
    plotted_cell: Cell | None = None
    cells = [cell for cell in sweep(args.quick) if args.only in cell.label]
    for cell in cells:
        runs, floor, capped = run_cell(cell, args.seed)
        keda = judge(cell, "keda-like", runs, floor, capped)
        for name in ("ours", "ours, new installation"):
            v = judge(cell, name, runs, floor, capped)
            note = ""
            key = (name, cell.seed_key, cell.pod_start)
            if cell.failover is None:
                twins[key] = v.p95
            elif key in twins:
                change = v.p95 / twins[key] - 1
                note = f" (fail-over changes p95 by {change:+.1%})"
                if abs(change) >= 0.10:
                    v.failures.append(f"fail-over changes p95 by {change:+.1%}")
            verdicts.append(v)
            print(row(v, keda, note), flush=True)
        if (
            cell.students == 30_000
            and cell.final_hour_share == 0.6
            and cell.surge_seconds == 120
            and (cell.pod_start == 120 and cell.failover is None and cell.shape == "curve")
        ):
            plotted = runs
            plotted_cell = cell
    print(f"\n{len(cells)} cells in {time.perf_counter() - began:.0f}s")
    # Path("") would be ".": an empty --plots must mean no plots, not plots in the working directory.
    if plotted is not None and plotted_cell is not None and args.plots:
        draw_plots(plotted, plotted_cell, Path(args.plots))
    for name in ("ours", "ours, new installation"):
        missed = [v for v in verdicts if v.policy == name and v.failures]
        mine = [v for v in verdicts if v.policy == name]
        print(f"{name}: targets met in {len(mine) - len(missed)} of {len(mine)} cells")
        for v in missed:
            print(f"  - {v.cell.label}: {'; '.join(v.failures)}")
    return 0


# --- plots ------------------------------------------------------------------------------------------------------


def draw_plots(runs: dict[str, Run], cell: Cell, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, run in runs.items():
        inside = (run.times >= -2 * HOUR) & (run.times < 15 * 60)
        minutes = run.times[inside] / 60
        slug = name.replace(", ", "-").replace(" ", "-")
        line_panels(
            directory / f"autoscale-{slug}.png",
            title=f"{name}: {cell.label}",
            x=minutes,
            x_label="minutes to the deadline",
            panels=[
                ("replicas", {p: run.paid[inside, POOLS.index(p)] for p in ("similarity", "thumbnail", "scan")}),
                ("jobs waiting (all queues)", {"waiting": run.waiting[inside]}),
            ],
        )


COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def line_panels(
    path: Path, title: str, x: np.ndarray, x_label: str, panels: list[tuple[str, dict[str, np.ndarray]]]
) -> None:
    """Stacked line charts drawn with Pillow (the project carries no plotting library)."""
    from PIL import Image, ImageDraw

    width, panel_h, left, right, top = 900, 190, 70, 20, 30
    image = Image.new("RGB", (width, top + panel_h * len(panels) + 30), "white")
    draw = ImageDraw.Draw(image)
    draw.text((left, 8), title, fill="black")
    x0, x1 = float(x.min()), float(x.max())
    for n, (label, series) in enumerate(panels):
        y_top = top + n * panel_h + 10
        y_bottom = y_top + panel_h - 40
        peak = max(float(np.max(v)) for v in series.values()) or 1.0
        draw.rectangle((left, y_top, width - right, y_bottom), outline=(160, 160, 160))
        draw.text((5, y_top), f"{peak:,.0f}", fill="black")
        draw.text((5, y_bottom - 10), "0", fill="black")
        draw.text((left + 5, y_top + 3), label, fill="black")
        for tick in range(math.ceil(x0 / 15) * 15, int(x1) + 1, 15):
            tx = left + (tick - x0) / (x1 - x0) * (width - left - right)
            draw.line((tx, y_bottom, tx, y_bottom + 4), fill="black")
            draw.text((tx - 8, y_bottom + 6), str(tick), fill="black")
        for i, (name, values) in enumerate(series.items()):
            colour = COLOURS[i % len(COLOURS)]
            xs = left + (x - x0) / (x1 - x0) * (width - left - right)
            ys = y_bottom - values / peak * (y_bottom - y_top - 18)
            draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour, width=2)
            draw.text((width - right - 110, y_top + 3 + 14 * i), name, fill=colour)
    draw.text((width // 2 - 60, image.height - 18), x_label, fill="black")
    image.save(path)


if __name__ == "__main__":
    raise SystemExit(main())
