"""How many replicas each worker pool should run. Pure functions: no I/O, no clock.

Two recommendations, the larger wins:

- reactive (what is here): the measured arrival rate plus enough extra to
  clear the jobs already waiting within the pool's target wait;
- forecast (what is coming): the peak arrival rate expected within the next
  lead time (≥ pod start), so pods are up before the submissions hit.

Capacity is counted in slots, the jobs one replica usefully runs at once
(an io worker's max_jobs; one per core for a cpu-bound one): spare capacity is
added on slots, then rounded up to whole replicas.

Scaling up is immediate (bounded by a step); scaling down takes the highest
recommendation (reactive or forecast) of the stabilisation window, like the
HPA, so a noisy queue does not make the fleet flap and pods started for a
forecast, still starting or not, are not released the moment it falls.
Without queue readings (Redis unreachable) a pool never shrinks: it holds
its replicas, and grows only for the forecast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PoolLimits:
    min_replicas: int = 1
    max_replicas: int = 20
    target_wait: float = 30.0
    max_scale_up_step: int = 100
    max_scale_down_step: int = 100
    scale_down_window: float = 60.0
    headroom: float = 0.10
    burst_factor: float = 1.0
    lead: float = 65.0


@dataclass(frozen=True)
class PoolInputs:
    """What one cycle observed for one pool."""

    task: str
    ready: int  # due now, not yet picked up
    running: int  # picked up by a worker
    deferred: int  # scheduled for later (retries, polls)
    current_replicas: int
    drain_rate: float  # jobs/s one ready replica finishes (learned from the workers, or the default)
    arrival_rate: float = 0.0  # jobs/s arriving, measured
    due_soon: int = 0  # deferred jobs coming due within the lead time
    upstream: int = 0  # jobs waiting in earlier steps that will reach this pool
    forecast_jobs: float = 0.0  # submissions expected within the lead time
    forecast_peak_rate: float = 0.0  # their peak rate (per s) within the lead time
    slots: int = 1  # jobs one replica usefully runs at once
    queues_known: bool = True  # False: Redis unreachable, the counts above are unknown


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class Decision:
    task: str
    current: int
    desired: int
    reactive: int
    forecast: int
    reasons: tuple[str, ...]
    inputs: PoolInputs
    # Recommendations (reactive or forecast, the larger) inside the stabilisation window, newest last.
    history: tuple[Recommendation, ...] = field(default=(), repr=False)

    @property
    def changed(self) -> bool:
        return self.desired != self.current

    def as_dict(self) -> dict[str, object]:
        return {
            "pool": self.task,
            "current": self.current,
            "desired": self.desired,
            "reactive": self.reactive,
            "forecast": self.forecast,
            "reasons": list(self.reasons),
            "inputs": {
                "ready": self.inputs.ready,
                "running": self.inputs.running,
                "deferred": self.inputs.deferred,
                "due_soon": self.inputs.due_soon,
                "upstream": self.inputs.upstream,
                "drain_rate": round(self.inputs.drain_rate, 3),
                "arrival_rate": round(self.inputs.arrival_rate, 3),
                "forecast_jobs": round(self.inputs.forecast_jobs, 1),
                "forecast_peak_rate": round(self.inputs.forecast_peak_rate, 3),
                "slots": self.inputs.slots,
                "queues_known": self.inputs.queues_known,
            },
        }


def reactive_replicas(inputs: PoolInputs, limits: PoolLimits) -> int:
    """Serve the measured arrival rate and clear the waiting jobs within the target wait."""
    drain = max(inputs.drain_rate, 1e-9)
    waiting = inputs.ready + inputs.due_soon
    serving = serving_replicas(inputs.arrival_rate, drain, limits, inputs.slots) + waiting / limits.target_wait / drain
    # Everything in the pool (running too) must be done within the target wait.
    in_pool = (waiting + inputs.running) / (drain * limits.target_wait)
    return math.ceil(max(serving, in_pool) - 1e-9)


def forecast_replicas(inputs: PoolInputs, limits: PoolLimits) -> int:
    """Capacity for what the forecast and the earlier steps will send within the lead time."""
    drain = max(inputs.drain_rate, 1e-9)
    coming = inputs.forecast_jobs + inputs.upstream
    rate = max(inputs.forecast_peak_rate, coming / max(limits.lead, 1e-9))
    return math.ceil(serving_replicas(rate, drain, limits, inputs.slots) - 1e-9)


def serving_replicas(rate: float, drain: float, limits: PoolLimits, slots: int = 1) -> float:
    """Replicas to serve `rate` jobs/s without queueing: square-root staffing on slots.

    The offered load L = rate / (drain / slots) in busy slots, a proportional
    headroom, and burst_factor x sqrt(L) for Poisson bursts: a small pool needs
    relatively more spare capacity than a large one to keep waits near zero.
    A replica of many slots absorbs bursts itself, so the spare is counted in
    slots, not whole replicas.
    """
    if rate <= 0:
        return 0.0
    slots = max(slots, 1)
    load = rate * slots / drain
    return (load * (1 + limits.headroom) + limits.burst_factor * math.sqrt(load)) / slots


def decide(
    inputs: PoolInputs,
    limits: PoolLimits,
    now: float,
    history: tuple[Recommendation, ...] = (),
) -> Decision:
    """The replicas one pool should run now, with the reasons why."""
    reasons: list[str] = []
    current = inputs.current_replicas
    reactive = reactive_replicas(inputs, limits)
    ahead = forecast_replicas(inputs, limits)
    reasons.append(
        f"reactive {reactive}: {inputs.ready} ready + {inputs.due_soon} due soon + {inputs.running} running, "
        f"arriving {inputs.arrival_rate:.2f}/s, {inputs.drain_rate:.2f}/s per replica, "
        f"target wait {limits.target_wait:g}s"
    )
    reasons.append(
        f"forecast {ahead}: {inputs.forecast_jobs:.0f} submissions in the next {limits.lead:g}s "
        f"(peak {inputs.forecast_peak_rate:.2f}/s) + {inputs.upstream} from earlier steps"
    )

    wanted = max(reactive, ahead)
    if not inputs.queues_known:
        # Blind: the queues may be full. Never shrink; grow only for what the database forecasts.
        wanted = max(current, ahead)
        reasons.append(f"queues unreadable: holding {current}, growing only for the forecast")
    window = (*(r for r in history if now - r.at < limits.scale_down_window), Recommendation(now, wanted))
    held = max(r.replicas for r in window)
    if held > wanted:
        reasons.append(f"scale-down window {limits.scale_down_window:g}s holds {held}")
    target = held

    bounded = min(max(target, limits.min_replicas), limits.max_replicas)
    if bounded != target:
        reasons.append(f"bounded to [{limits.min_replicas}, {limits.max_replicas}]: {bounded}")
    desired = bounded
    if desired > current + limits.max_scale_up_step:
        desired = current + limits.max_scale_up_step
        reasons.append(f"scale-up step limited to +{limits.max_scale_up_step}")
    elif desired < current - limits.max_scale_down_step:
        desired = current - limits.max_scale_down_step
        reasons.append(f"scale-down step limited to -{limits.max_scale_down_step}")
    # Step limits never push outside the bounds (e.g. when current itself is out of them).
    desired = min(max(desired, limits.min_replicas), limits.max_replicas)
    reasons.append(f"{current} → {desired}" if desired != current else f"stay at {current}")
    return Decision(
        task=inputs.task,
        current=current,
        desired=desired,
        reactive=reactive,
        forecast=ahead,
        reasons=tuple(reasons),
        inputs=inputs,
        history=window,
    )


@dataclass(frozen=True)
class CounterSample:
    """A pool's counters at one moment: feeds the measured rates."""

    at: float
    completed: int
    queued: int  # ready + running + deferred
    ready: int
    busy: float = 0.0  # seconds jobs ran, summed over jobs (workers report it)
    occupied: float = 0.0  # seconds a worker had at least one job running, summed over workers


def measured_arrival_rate(previous: CounterSample, current: CounterSample) -> float | None:
    """Jobs/s that entered the queue: completions plus growth of the queue."""
    elapsed = current.at - previous.at
    if elapsed <= 0 or current.completed < previous.completed:
        return None  # clock or counter went back (e.g. Redis flushed)
    arrived = (current.completed - previous.completed) + (current.queued - previous.queued)
    return max(0.0, arrived / elapsed)


def measured_service_time(previous: CounterSample, current: CounterSample, cpu_bound: bool, slots: int) -> float | None:
    """Seconds one slot takes per job, from what the workers report; None if nothing finished.

    It needs no replica count, so pods still starting do not dilute it, and
    no saturated queue: every finished job tells. An io-bound job's own run
    time is its slot's time (jobs overlap freely). A cpu-bound pool's jobs
    share the cores, so each job's run time grows with how many run at once;
    there the time workers were occupied at all, per job, is what a slot
    spends (x slots, the cores a replica has).
    """
    done = current.completed - previous.completed
    if done <= 0:
        return None
    spent = (current.occupied - previous.occupied) * max(slots, 1) if cpu_bound else current.busy - previous.busy
    if spent <= 0:
        return None  # workers that do not report busy time, or a counter reset
    return spent / done


def smooth(old: float | None, new: float | None, weight: float = 0.5) -> float | None:
    """Exponentially weighted mean; keeps the old value when nothing new was measured."""
    if new is None:
        return old
    if old is None:
        return new
    return old + weight * (new - old)


def queue_read_limit_problems(max_replicas: dict[str, int], max_jobs: int, queue_read_limit: int) -> list[str]:
    """Pools whose full size could run more jobs than an arq worker reads from the queue.

    arq keeps running jobs in the queue; a worker reads the first
    `queue_read_limit` ids, so once more jobs run than that, new workers see
    only locked jobs and sit idle.
    """
    return [
        f"pool {task}: max_replicas {replicas} x max_jobs {max_jobs} = {replicas * max_jobs} "
        f"≥ queue_read_limit {queue_read_limit}; raise HANDIN_WORKER__QUEUE_READ_LIMIT"
        for task, replicas in max_replicas.items()
        if replicas * max_jobs >= queue_read_limit
    ]
