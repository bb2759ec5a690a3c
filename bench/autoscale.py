"""Deadline-spike simulation: our autoscaling policy against a static fleet, a KEDA-like HPA and an oracle.

    python -m bench.autoscale            # the full sweep, table, plots into docs/img/
    python -m bench.autoscale --quick    # one cell, for a smoke test

30,000 students, one shared deadline. Arrivals are a non-homogeneous Poisson
process drawn per second from the arrival curve (autoscaler/forecast.py) with
86% in the final 24 h and the swept share in the final hour. The run covers
the final 24 h and the hour after the deadline at 1 s resolution.

Each worker pool is a fluid FIFO queue: every second it starts up to
``ready replicas x concurrency / service time`` jobs; a started job finishes
after its mean service time and enters the next step's queue (scan → store →
the four parallel steps). Individual submissions are then traced through the
cumulative arrival/start curves of each queue with their own sampled service
times (lognormal, CV 0.3), which gives exact FIFO waiting times for the fluid
queues. A 1 s fluid step is the resolution a 5 s control loop needs and keeps
the whole sweep to a few minutes on two cores; see docs/autoscaling.md.

"our policy" calls the very functions the autoscaler loop calls:
autoscaler.policy.decide, autoscaler.forecast.forecast and the RateMeter of
autoscaler.sources, with the same settings object.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from autoscaler.forecast import DAY, HOUR, ArrivalCurve, DeadlineLoad, forecast
from autoscaler.main import pool_limits, upstream_steps
from autoscaler.policy import CounterSample, PoolInputs, Recommendation, decide
from autoscaler.sources import RateMeter
from core.keys import TASKS
from core.pipeline import STEPS_BY_NAME
from core.settings import Settings

STUDENTS = 30_000
AFTER = HOUR  # simulated time after the deadline
WINDOW = int(DAY + AFTER)  # seconds simulated; the deadline is at DAY
DEADLINE = DAY
# Mean service seconds per job: bench/pipeline.py's measurements of our real
# workers where a run left them (bench/results/pipeline.json), else these defaults.
DEFAULT_SERVICE = {"scan": 0.25, "store": 0.17, "similarity": 1.0, "admin": 0.5, "receipt": 0.25, "thumbnail": 0.5}
MEASURED_SERVICE = Path(__file__).parent / "results" / "pipeline.json"


def service_times() -> dict[str, float]:
    service = dict(DEFAULT_SERVICE)
    if MEASURED_SERVICE.exists():
        measured = json.loads(MEASURED_SERVICE.read_text()).get("service_seconds_p50", {})
        service.update({step: float(value) for step, value in measured.items() if step in service and value > 0})
    return service


SERVICE = service_times()
CONCURRENCY = {"io": 10, "cpu": 1}  # jobs at once per replica, by profile
SERVICE_CV = 0.3
MAX_REPLICAS = 500
LEVELS = (("scan",), ("store",), ("similarity", "admin", "receipt", "thumbnail"))
POOLS = tuple(task for level in LEVELS for task in level)
assert set(POOLS) == set(TASKS)
CONC = np.array([CONCURRENCY[STEPS_BY_NAME[p].profile] for p in POOLS], dtype=float)
SVC = np.array([SERVICE[p] for p in POOLS])
MU = CONC / SVC  # jobs/s one replica drains
POLICIES = ("static", "keda-like", "ours", "ours (default curve)", "oracle")

# KEDA-like: HPA on the ZCARD of each queue (ready + running jobs).
HPA_SYNC = 15
HPA_TOLERANCE = 0.1
HPA_STABILISATION = 300
KEDA_TARGET_SECONDS = 5.0  # listLength per replica = what one replica clears in 5 s


@dataclass(frozen=True)
class Cell:
    final_hour_share: float
    surge_seconds: float
    pod_start: float

    @property
    def label(self) -> str:
        return f"{self.final_hour_share:.0%} / tau {self.surge_seconds / 60:g} min / pod {self.pod_start:g} s"


@dataclass
class Run:
    """What one policy did in one cell."""

    inflow: np.ndarray  # (steps, pools) jobs entering each queue per second
    starts: np.ndarray  # (steps, pools) jobs started per second
    replicas: np.ndarray  # (steps, pools) replicas paid for (ready + starting)
    backlog: np.ndarray  # (steps,) jobs waiting in all queues
    latencies: np.ndarray = field(default_factory=lambda: np.zeros(0))

    @property
    def replica_minutes(self) -> float:
        return float(self.replicas.sum() / 60)

    def replica_minutes_since(self, second: int) -> float:
        return float(self.replicas[second:].sum() / 60)


class Fleet:
    """One policy's replicas per pool with pod start-up: requested pods take `pod_start` seconds to take jobs.

    `ready` and `paid` are rows of the simulation's shared matrices, updated in place.
    """

    def __init__(self, ready: np.ndarray, paid: np.ndarray, initial: np.ndarray, pod_start: float) -> None:
        self.ready, self.paid = ready, paid
        self.ready[:] = initial
        self.paid[:] = initial
        self.pending: list[list[tuple[float, int]]] = [[] for _ in POOLS]
        self.pod_start = pod_start
        self.next_due = math.inf

    def requested(self, pool: int) -> int:
        return int(self.paid[pool])

    def set(self, pool: int, replicas: int, now: float) -> None:
        have = self.requested(pool)
        if replicas > have:
            due = now + self.pod_start
            self.pending[pool].append((due, replicas - have))
            self.next_due = min(self.next_due, due)
        elif replicas < have:
            drop = have - replicas
            while drop and self.pending[pool]:  # cancel pods still starting, newest first
                due, n = self.pending[pool].pop()
                if n > drop:
                    self.pending[pool].append((due, n - drop))
                    drop = 0
                else:
                    drop -= n
            self.ready[pool] -= drop
        self.paid[pool] = replicas

    def advance(self, now: float) -> None:
        if now < self.next_due:
            return
        self.next_due = math.inf
        for pool, queue in enumerate(self.pending):
            keep = []
            for due, n in queue:
                if due <= now:
                    self.ready[pool] += n
                else:
                    keep.append((due, n))
                    self.next_due = min(self.next_due, due)
            self.pending[pool] = keep


def arrivals(curve: ArrivalCurve, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Per-second submission counts over the window, and how many arrived before it."""
    edges = np.arange(WINDOW + 1, dtype=float)
    u = DEADLINE - edges  # seconds before the deadline at each edge
    cdf = np.array([curve.cdf(x) if x > 0 else 0.0 for x in u])
    expected = STUDENTS * (cdf[:-1] - cdf[1:])
    before = int(rng.poisson(STUDENTS * (1.0 - curve.cdf(DEADLINE))))
    return rng.poisson(expected).astype(float), before


class OurPolicy:
    """The autoscaler's decide() per pool every interval, fed what the loop would read."""

    def __init__(self, settings: Settings, curve: ArrivalCurve, submitted_before: int) -> None:
        self.settings = settings
        self.curve = curve
        self.submitted = submitted_before
        self.interval = int(settings.autoscaler.interval_seconds)
        self.lead = settings.autoscaler.lead
        self.limits = [pool_limits(settings, p) for p in POOLS]
        self.meters = [
            RateMeter(MU[i], settings.autoscaler.pool(p).drain_rate_per_replica) for i, p in enumerate(POOLS)
        ]
        self.history: list[tuple[Recommendation, ...]] = [() for _ in POOLS]
        self.upstream = [[POOLS.index(u) for u in upstream_steps(p)] for p in POOLS]

    def decide(self, now: float, queue: np.ndarray, running: np.ndarray, completed: np.ndarray,
               fleet: Fleet) -> None:
        load = DeadlineLoad(1, DEADLINE, STUDENTS, self.submitted)
        ahead = forecast([load], now, self.lead, self.curve)
        for i, task in enumerate(POOLS):
            current = fleet.requested(i)
            ready, run = round(queue[i]), round(running[i])
            meter = self.meters[i]
            meter.observe(CounterSample(now, int(completed[i]), ready + run, ready), current)
            inputs = PoolInputs(
                task=task, ready=ready, running=run, deferred=0, current_replicas=current,
                drain_rate=meter.drain_rate, arrival_rate=meter.arrival_rate,
                upstream=int(sum(queue[j] + running[j] for j in self.upstream[i])),
                forecast_jobs=ahead.jobs, forecast_peak_rate=ahead.peak_rate,
            )
            decision = decide(inputs, self.limits[i], now, self.history[i])
            self.history[i] = decision.history
            if decision.desired != current:
                fleet.set(i, decision.desired, now)


class KedaLike:
    """KEDA redis scaler + HPA: desired = ceil(ZCARD / listLength), 10% tolerance, 2x/+4 up, 300 s down."""

    interval = HPA_SYNC

    def __init__(self) -> None:
        self.target = MU * KEDA_TARGET_SECONDS
        self.recommendations: list[list[tuple[float, int]]] = [[] for _ in POOLS]

    def decide(self, now: float, queue: np.ndarray, running: np.ndarray, completed: np.ndarray,
               fleet: Fleet) -> None:
        for i in range(len(POOLS)):
            current = fleet.requested(i)
            metric = queue[i] + running[i]
            ratio = metric / (self.target[i] * max(current, 1))
            desired = current if abs(ratio - 1) <= HPA_TOLERANCE else math.ceil(metric / self.target[i])
            desired = min(max(desired, 1), MAX_REPLICAS)
            window = [r for r in self.recommendations[i] if now - r[0] < HPA_STABILISATION] + [(now, desired)]
            self.recommendations[i] = window
            if desired < current:
                desired = min(current, max(n for _, n in window))
            desired = min(desired, max(2 * current, current + 4))
            if desired != current:
                fleet.set(i, desired, now)


def no_wait_inflow(arr: np.ndarray) -> np.ndarray:
    """Jobs entering each queue per second if nothing ever waited."""
    flows = np.zeros((len(arr), len(POOLS)))
    flows[:, 0] = arr
    for level in range(1, len(LEVELS)):
        parent = POOLS.index(LEVELS[level - 1][0])
        frac = SVC[parent] % 1.0
        shifted = (1 - frac) * flows[:, parent] + frac * np.concatenate(([0.0], flows[:-1, parent]))
        for task in LEVELS[level]:
            flows[:, POOLS.index(task)] = shifted
    return flows


def oracle_plan(arr: np.ndarray, pod_start: float) -> tuple[np.ndarray, np.ndarray]:
    """Ready replicas the realised arrivals need each second (±5 s), and pods paid for (booted a pod-start ahead)."""
    flows = no_wait_inflow(arr)
    padded = np.pad(flows, ((5, 5), (0, 0)), mode="edge")
    peak = np.lib.stride_tricks.sliding_window_view(padded, 11, axis=0).max(axis=-1)
    ready = np.maximum(np.ceil(peak / MU - 1e-9), 1)
    ahead = int(pod_start)
    padded_ready = np.pad(ready, ((0, ahead), (0, 0)), mode="edge")
    paid = np.lib.stride_tricks.sliding_window_view(padded_ready, ahead + 1, axis=0).max(axis=-1)
    return ready, paid


Controller = Callable[[float, np.ndarray, np.ndarray, np.ndarray, Fleet], None]


@dataclass
class Policy:
    """A row of the simulation: either a controller acting every `interval` seconds, or a fixed plan."""

    name: str
    controller: Controller | None = None
    interval: int = 1
    initial: np.ndarray | None = None
    plan: tuple[np.ndarray, np.ndarray] | None = None


def simulate(arr: np.ndarray, policies: list[Policy], pod_start: float) -> list[Run]:
    """Every policy side by side on the same arrivals, one second at a time."""
    steps, rows, pools = len(arr), len(policies), len(POOLS)
    inflow = np.zeros((steps, rows, pools))
    starts = np.zeros((steps, rows, pools))
    paid_log = np.zeros((steps, rows, pools))
    backlog = np.zeros((steps, rows))
    ready = np.zeros((rows, pools))
    paid = np.zeros((rows, pools))
    queue = np.zeros((rows, pools))
    completed = np.zeros((rows, pools))
    carry = np.zeros((rows, pools))  # completions that reach the next queue in the next second
    frac = SVC % 1.0
    fleets = [
        None if p.plan is not None else Fleet(ready[r], paid[r], p.initial if p.initial is not None
                                              else np.ones(pools), pod_start)
        for r, p in enumerate(policies)
    ]
    scan, store, leaves = 0, 1, slice(2, pools)
    zero = np.zeros(pools)
    for k in range(steps):
        for r, policy in enumerate(policies):
            fleet = fleets[r]
            if fleet is None:
                assert policy.plan is not None
                ready[r] = policy.plan[0][k]
                paid[r] = policy.plan[1][k]
                continue
            fleet.advance(k)
            if policy.controller is not None and k % policy.interval == 0:
                running = starts[k - 1, r] * SVC if k else zero
                policy.controller(float(k), queue[r], running, completed[r], fleet)
        capacity = ready * MU
        into = carry
        into[:, scan] += arr[k]
        started = np.empty((rows, pools))
        available = queue[:, scan] + into[:, scan]
        started[:, scan] = np.minimum(available, capacity[:, scan])
        queue[:, scan] = available - started[:, scan]
        into[:, store] += (1 - frac[scan]) * started[:, scan]
        available = queue[:, store] + into[:, store]
        started[:, store] = np.minimum(available, capacity[:, store])
        queue[:, store] = available - started[:, store]
        into[:, leaves] += ((1 - frac[store]) * started[:, store])[:, None]
        available = queue[:, leaves] + into[:, leaves]
        started[:, leaves] = np.minimum(available, capacity[:, leaves])
        queue[:, leaves] = available - started[:, leaves]
        carry = np.zeros((rows, pools))
        carry[:, store] = frac[scan] * started[:, scan]
        carry[:, leaves] = (frac[store] * started[:, store])[:, None]
        completed += started
        inflow[k] = into
        starts[k] = started
        paid_log[k] = paid
        backlog[k] = queue.sum(axis=1)
    return [Run(inflow[:, r], starts[:, r], paid_log[:, r], backlog[:, r]) for r in range(rows)]


def trace(run: Run, upload: np.ndarray, service: np.ndarray) -> np.ndarray:
    """Upload-to-complete seconds of each submission through the fluid FIFO queues."""
    grid = np.arange(len(run.inflow) + 1, dtype=float)
    done_at = np.zeros((len(upload), len(POOLS)))
    reach = {0: upload}
    for level in LEVELS:
        for task in level:
            p = POOLS.index(task)
            arrive = reach[p] if p == 0 else done_at[:, POOLS.index("scan" if task == "store" else "store")]
            cum_in = np.concatenate(([0.0], np.cumsum(run.inflow[:, p])))
            # A strictly rising start curve, so its inverse is defined on plateaus.
            cum_start = np.concatenate(([0.0], np.cumsum(run.starts[:, p]))) + grid * 1e-9
            position = np.interp(arrive, grid, cum_in)
            start = np.maximum(np.interp(position, cum_start, grid), arrive)
            done_at[:, p] = start + service[:, p]
    leaves = [POOLS.index(t) for t in LEVELS[-1]]
    return done_at[:, leaves].max(axis=1) - upload


def sample_uploads(arr: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    seconds = np.repeat(np.arange(len(arr)), arr.astype(int))
    return seconds + rng.random(len(seconds))


def sample_service(count: int, rng: np.random.Generator) -> np.ndarray:
    sigma = math.sqrt(math.log(1 + SERVICE_CV**2))
    return np.exp(rng.normal(np.log(SVC) - sigma**2 / 2, sigma, size=(count, len(POOLS))))


def bench_settings(pod_start: float) -> Settings:
    """The autoscaler's settings for the bench: defaults, with the pools' drain rates as measured."""
    return Settings(
        autoscaler={
            "pod_start_seconds": pod_start,
            "interval_seconds": 5,
            "pools": {p: {"max_replicas": MAX_REPLICAS, "drain_rate_per_replica": float(MU[i])}
                      for i, p in enumerate(POOLS)},
        }
    )


def run_cell(cell: Cell, seed: int) -> dict[str, Run]:
    rng = np.random.default_rng(seed)
    truth = ArrivalCurve(0.86, cell.final_hour_share, cell.surge_seconds)
    arr, before = arrivals(truth, rng)
    settings = bench_settings(cell.pod_start)
    uploads = sample_uploads(arr, rng)
    service = sample_service(len(uploads), rng)
    uploaded = np.concatenate(([0.0], np.cumsum(arr)))  # by the start of each second
    keda = KedaLike()
    policies = [
        Policy("static", initial=np.maximum(np.ceil(arr.mean() / MU), 1)),  # sized for the average
        Policy("keda-like", keda.decide, keda.interval),
    ]
    for name, curve in (("ours", truth), ("ours (default curve)", ArrivalCurve())):
        ours = OurPolicy(settings, curve, before)

        def decide_and_count(now: float, queue: np.ndarray, running: np.ndarray, completed: np.ndarray,
                             fleet: Fleet, ours: OurPolicy = ours) -> None:
            # What the database would say: everyone who uploaded so far has submitted.
            ours.submitted = before + int(uploaded[int(now)])
            ours.decide(now, queue, running, completed, fleet)

        policies.append(Policy(name, decide_and_count, ours.interval))
    policies.append(Policy("oracle", plan=oracle_plan(arr, cell.pod_start)))
    runs = dict(zip([p.name for p in policies], simulate(arr, policies, cell.pod_start), strict=True))
    for run in runs.values():
        run.latencies = trace(run, uploads, service)
    runs["floor"] = Run(arr[:, None], arr[:, None], np.zeros((1, 1)), np.zeros(1),
                        latencies=service[:, 0] + service[:, 1] + service[:, 2:].max(axis=1))
    return runs


def percentiles(values: np.ndarray) -> tuple[float, float, float]:
    p50, p95, p99 = np.percentile(values, [50, 95, 99])
    return float(p50), float(p95), float(p99)


def report(cells: list[Cell], seed: int, plots: Path | None) -> tuple[str, list[str]]:
    lines = [
        "| final hour / surge tau / pod start | policy | p50 s | p95 s | p99 s | replica-min (25 h) "
        "| replica-min (final 2 h) |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    failures: list[str] = []
    tail = int(DEADLINE - 2 * HOUR)
    for cell in cells:
        started = time.perf_counter()
        runs = run_cell(cell, seed)
        floor = percentiles(runs["floor"].latencies)
        for name in ("floor", *POLICIES):
            run = runs[name]
            p50, p95, p99 = percentiles(run.latencies)
            cost = "-" if name == "floor" else f"{run.replica_minutes:,.0f}"
            cost_tail = "-" if name == "floor" else f"{run.replica_minutes_since(tail):,.0f}"
            lines.append(f"| {cell.label} | {name} | {p50:.2f} | {p95:.2f} | {p99:.2f} | {cost} | {cost_tail} |")
        ours, keda, oracle = runs["ours"], runs["keda-like"], runs["oracle"]
        our_p95, keda_p95 = percentiles(ours.latencies)[1], percentiles(keda.latencies)[1]
        if our_p95 > 1.25 * floor[1]:
            failures.append(f"{cell.label}: our p95 {our_p95:.2f}s > 1.25 x floor {floor[1]:.2f}s")
        if ours.replica_minutes > 1.1 * oracle.replica_minutes:
            failures.append(f"{cell.label}: our replica-minutes {ours.replica_minutes:,.0f} "
                            f"> 1.1 x oracle {oracle.replica_minutes:,.0f}")
        if keda_p95 > 1.25 * floor[1] and our_p95 >= keda_p95:
            failures.append(f"{cell.label}: our p95 {our_p95:.2f}s not better than KEDA-like {keda_p95:.2f}s")
        print(lines[-len(POLICIES) - 1 :] and "\n".join(lines[-len(POLICIES) - 1 :]), flush=True)
        print(f"  ({time.perf_counter() - started:.0f}s)", flush=True)
        if plots is not None and cell == cells[-1]:
            draw_plots(runs, cell, plots)
    return "\n".join(lines), failures


def draw_plots(runs: dict[str, Run], cell: Cell, directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    start, end = int(DEADLINE - 2 * HOUR), int(DEADLINE + 15 * 60)
    minutes = (np.arange(start, end) - DEADLINE) / 60
    arrivals = runs["oracle"].inflow[start:end, 0]
    smooth = np.convolve(arrivals, np.ones(10) / 10, mode="same")
    for name in POLICIES:
        run = runs[name]
        slug = name.replace(" ", "-").replace("(", "").replace(")", "")
        line_panels(
            directory / f"autoscale-{slug}.png",
            title=f"{name}: {cell.label}",
            x=minutes,
            x_label="minutes to the deadline",
            panels=[
                ("submissions/s (10 s mean)", {"arrivals": smooth}),
                ("replicas", {p: run.replicas[start:end, POOLS.index(p)] for p in ("similarity", "thumbnail", "scan")}),
                ("jobs waiting (all queues)", {"backlog": run.backlog[start:end]}),
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
            step = max(1, len(values) // (width - left - right))
            xs = left + (x[::step] - x0) / (x1 - x0) * (width - left - right)
            ys = y_bottom - values[::step] / peak * (y_bottom - y_top - 18)
            draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=colour, width=2)
            draw.text((width - right - 110, y_top + 3 + 14 * i), name, fill=colour)
    draw.text((width // 2 - 60, image.height - 18), x_label, fill="black")
    image.save(path)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one cell only")
    parser.add_argument("--cell", help="one cell: final-hour share, surge seconds, pod start, e.g. 0.2,600,60")
    parser.add_argument("--seed", type=int, default=20261127)
    parser.add_argument("--plots", type=Path, default=Path("docs/img"), help="where PNG plots go ('' for none)")
    args = parser.parse_args()
    shares, taus, pods = (0.2, 0.4, 0.6), (120.0, 600.0), (30.0, 60.0, 120.0)
    cells = [Cell(h, t, p) for h in shares for t in taus for p in pods]
    if args.quick or args.cell:
        cells = [Cell(*map(float, (args.cell or "0.6,120,120").split(",")))]
    # The hardest cell last: its plots go in the docs.
    cells.sort(key=lambda c: (c.final_hour_share, -c.surge_seconds, c.pod_start))
    source = "bench/pipeline.py's measurements" if MEASURED_SERVICE.exists() else "the declared defaults"
    print("service seconds per job, from " + source + ": "
          + ", ".join(f"{step} {SERVICE[step]:g}" for step in POOLS), flush=True)
    table, failures = report(cells, args.seed, args.plots if str(args.plots) else None)
    print()
    print(table)
    print()
    if failures:
        print("targets missed:")
        for failure in failures:
            print(f"  - {failure}")
    else:
        print("all targets met: our p95 ≤ 1.25 x floor, ≤ 1.1 x oracle replica-minutes, better p95 than KEDA-like")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
