"""An honest wait: where a submission's queued steps stand in their queues, and when they may be done.

The figures are the autoscaler's own (docs/autoscaling.md): the drain rate one
replica of the pool achieves (learned from what the workers report, else the
profile's declared default) and the pool's replicas, from the last decision
it saved in ``handin:autoscaler:state``. Nothing new is measured here, so the
page and the autoscaler never disagree about how fast a pool drains.

An arq queue is a sorted set scored by enqueue time (ms) and read in that
order (ties by id); arq keeps a running job in it. The jobs ahead of ours are
therefore its ZRANK (O(log n)), running ones included. One Lua call reads,
for every queued step at once, the job's score and rank, the due jobs in its
queue, whether it is already running, and the pool's saved state.

The estimate is a range, never a single time: the slow end assumes the
replicas the pool has now and a drain rate a little worse than measured, the
fast end the replicas the autoscaler has asked for (when it scales up) and a
little better. Until the pool's rate is measured the range is wider.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from core import keys
from core.pipeline import STEPS_BY_NAME
from core.settings import Settings

# How far the measured / declared drain rate may be off, each way.
MEASURED_SPREAD = 1.25
DEFAULT_SPREAD = 2.0
# A saved decision older than this no longer says workers are starting (the autoscaler stopped).
DECISION_FRESH_CYCLES = 6
DECISION_FRESH_MIN_SECONDS = 60.0

# "… in the queue for <this>"
QUEUE_FOR = {
    "scan": "the virus scan",
    "store": "storing",
    "similarity": "the similarity check",
    "admin": "posting to the admin system",
    "receipt": "the emailed receipt",
    "thumbnail": "the preview",
}

_WAIT = """
local now = tonumber(ARGV[1])
local n = (#KEYS - 1) / 2
local out = {}
for i = 1, n do
  local queue = KEYS[1 + i]
  local id = ARGV[1 + i]
  local score = redis.call('ZSCORE', queue, id)
  local row
  if score then
    row = {1, redis.call('ZRANK', queue, id), redis.call('ZCOUNT', queue, '-inf', now),
           redis.call('EXISTS', KEYS[1 + n + i]), score}
  else
    row = {0, 0, 0, 0, '0'}
  end
  row[6] = redis.call('HGET', KEYS[1], ARGV[1 + n + i]) or ''
  out[i] = row
end
return out
"""


@dataclass(frozen=True)
class PoolRate:
    """How fast a pool drains now, as the autoscaler last knew it."""

    per_replica: float  # jobs/s one ready replica drains
    replicas: int  # replicas the pool has
    desired: int  # replicas the autoscaler last asked for
    slots: int  # jobs one replica runs at once
    measured: bool  # learned from the workers, not the declared default
    for_deadline: bool  # the scale-up is for a deadline ahead (the forecast), not only the queue

    @property
    def scaling_up(self) -> bool:
        return self.desired > self.replicas

    @property
    def service_seconds(self) -> float:
        """How long one job runs on one slot."""
        return self.slots / self.per_replica


@dataclass(frozen=True)
class StepWait:
    step: str
    ahead: int  # jobs before this one in its queue, running ones included
    due: int  # jobs due in the queue (ready or running), this one included
    running: bool
    deferred_until: float | None  # a retry waiting for its time (epoch seconds)
    rate: PoolRate
    # Seconds from now until the step is done: (fast, expected, slow); None when no worker drains the pool.
    estimate: tuple[float, float, float] | None

    def as_json(self, now: float) -> dict[str, Any]:
        estimate = None
        if self.estimate is not None:
            fast, expected, slow = self.estimate
            estimate = {
                "low_seconds": round(fast, 1),
                "expected_seconds": round(expected, 1),
                "high_seconds": round(slow, 1),
                "done_after": _iso(now + fast),
                "expected_at": _iso(now + expected),
                "done_before": _iso(now + slow),
                "measured": self.rate.measured,
                "text": estimate_text(fast, slow),
            }
        return {
            "step": self.step,
            "state": "running" if self.running else "deferred" if self.deferred_until is not None else "queued",
            "position": None if self.running else self.ahead + 1,
            "ahead": self.ahead,
            "in_queue": self.due,
            "position_text": position_text(self),
            "drain_rate": round(self.rate.per_replica * self.rate.replicas, 3),
            "replicas": self.rate.replicas,
            "workers_starting": self.rate.scaling_up,
            "workers_text": workers_text(self.rate),
            "estimate": estimate,
        }


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def position_text(wait: StepWait) -> str:
    what = QUEUE_FOR.get(wait.step, wait.step)
    if wait.running:
        return f"Running now: {what}."
    if wait.deferred_until is not None:
        return f"Waiting to try {what} again."
    return f"{ordinal(wait.ahead + 1)} of {max(wait.due, wait.ahead + 1)} in the queue for {what}."


def workers_text(rate: PoolRate) -> str | None:
    if not rate.scaling_up:
        return None
    if rate.for_deadline:
        return "More workers are starting for the deadline rush."
    return "More workers are starting to clear the queue."


def _span(seconds: float, up: bool) -> int:
    """Seconds rounded outwards to a unit a person reads: minutes under an hour, else quarter hours."""
    step = 60 if seconds < 3600 else 900
    rounded = math.ceil(seconds / step) if up else math.floor(seconds / step)
    return max(0, rounded) * step


def _words(seconds: int) -> str:
    if seconds < 3600:
        minutes = seconds // 60
        return f"{minutes} minute{'s' if minutes != 1 else ''}"
    hours = seconds / 3600
    return f"{hours:g} hour{'s' if hours != 1 else ''}"


def estimate_text(fast: float, slow: float) -> str:
    """A range a person can trust, in whole minutes (quarter hours past the first hour)."""
    high = _span(slow, up=True)
    low = min(_span(fast, up=False), high - (60 if high <= 3600 else 900))
    if high <= 60:
        return "Estimate: done within a minute."
    if low <= 0:
        return f"Estimate: done within {_words(high)}."
    if (low < 3600) == (high < 3600):  # one unit: "2 to 4 minutes"
        return f"Estimate: done in {_words(low).split(' ')[0]} to {_words(high)}."
    return f"Estimate: done in {_words(low)} to {_words(high)}."


def pool_rate(settings: Settings, task: str, saved: str | bytes | None, now: float) -> PoolRate:
    """The pool's figures from the autoscaler's saved state, else the declared defaults."""
    section = settings.autoscaler
    cpu = task in STEPS_BY_NAME and STEPS_BY_NAME[task].profile == "cpu"
    slots = section.cpu_slots if cpu else settings.worker.max_jobs
    configured = section.pool(task).drain_rate_per_replica
    default = configured or (section.default_drain_rate_cpu if cpu else section.default_drain_rate_io)
    fallback = PoolRate(default, max(1, section.pool(task).min_replicas), 0, slots, configured is not None, False)
    if not saved:
        return fallback
    try:
        state = json.loads(saved)
        last = state.get("last") or {}
        inputs = last.get("inputs") or {}
        per_replica = float(inputs.get("drain_rate") or default)
        replicas = int(last.get("current", fallback.replicas))
        desired = int(last.get("desired", replicas))
        fresh = now - float(last.get("at", 0)) <= max(
            DECISION_FRESH_MIN_SECONDS, DECISION_FRESH_CYCLES * section.interval_seconds
        )
        measured = configured is not None or bool((state.get("meter") or {}).get("service"))
        slots = int(inputs.get("slots") or slots)
        forecast = int(last.get("forecast", 0))
        reactive = int(last.get("reactive", 0))
    except (ValueError, TypeError, AttributeError):
        return fallback
    if per_replica <= 0:
        return fallback
    if not fresh:
        desired = replicas
    return PoolRate(per_replica, replicas, desired, max(1, slots), measured, forecast > reactive)


def estimate(ahead: int, rate: PoolRate, not_before: float = 0.0) -> tuple[float, float, float] | None:
    """(fast, expected, slow) seconds until a job with `ahead` jobs before it is done; None if nothing drains."""
    if rate.replicas <= 0 and rate.desired <= 0:
        return None
    spread = MEASURED_SPREAD if rate.measured else DEFAULT_SPREAD
    service = rate.service_seconds
    now_rate = rate.per_replica * max(rate.replicas, 0)
    best_rate = rate.per_replica * max(rate.replicas, rate.desired)
    expected_rate = now_rate if now_rate > 0 else best_rate
    # A job starts once the slots ahead of it are free: `ahead` jobs drained at the pool's rate.
    expected = not_before + ahead / expected_rate + service
    fast = not_before + ahead / (best_rate * spread) + service / spread
    slow = not_before + (ahead / now_rate if now_rate > 0 else ahead / best_rate) * spread + service * spread
    return fast, expected, slow


async def read_waits(
    redis: Redis, settings: Settings, submission_id: int, steps: Sequence[str], now: float
) -> list[StepWait]:
    """Where each of `steps` (queued in the database) stands in its queue, in one round trip."""
    if not steps:
        return []
    job_ids = [keys.job_id(step, submission_id) for step in steps]
    rows: list[list[Any]] = await redis.eval(  # type: ignore[misc]
        _WAIT,
        1 + 2 * len(steps),
        keys.AUTOSCALER_STATE,
        *[keys.queue_name(step) for step in steps],
        *[in_progress_key_prefix + job for job in job_ids],
        str(int(now * 1000)),
        *job_ids,
        *steps,
    )
    waits: list[StepWait] = []
    for step, row in zip(steps, rows, strict=True):
        found, rank, due, running, score, saved = row
        if not int(found):
            continue  # not in its queue (yet, or any more): the step's own state tells the rest
        rate = pool_rate(settings, step, saved, now)
        score_seconds = float(score) / 1000
        deferred = score_seconds if score_seconds > now else None
        ahead = int(rank)
        if bool(int(running)):
            guess = None
        else:
            guess = estimate(ahead, rate, (deferred - now) if deferred is not None else 0.0)
        waits.append(StepWait(step, ahead, int(due), bool(int(running)), deferred, rate, guess))
    return waits


def wait_view(waits: Sequence[StepWait], now: float) -> dict[str, Any]:
    """The wait endpoint's answer: each queued step, and the latest estimate of them all."""
    steps = [wait.as_json(now) for wait in waits]
    estimates = [step["estimate"] for step in steps if step["estimate"] is not None]
    return {
        "at": _iso(now),
        "waiting": any(not wait.running for wait in waits),
        "steps": steps,
        "estimate": max(estimates, key=lambda estimate: estimate["high_seconds"], default=None),
        "workers_starting": any(wait.rate.scaling_up for wait in waits),
    }


def _iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
