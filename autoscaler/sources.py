"""What the autoscaler reads each cycle: queue depths from Redis, deadlines from the database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.forecast import DeadlineLoad
from autoscaler.policy import CounterSample, measured_arrival_rate, measured_drain_rate, smooth
from core import keys
from core.models import Assignment, Enrolment, Submission

# One round trip for every pool: arq keeps running jobs in the queue (score =
# enqueue time) and marks them with an in-progress key; deferred jobs have a
# future score. Scanning the due ids is capped so a huge backlog stays cheap:
# past the cap, the uncounted rest is reported as ready.
_QUEUE_DEPTHS = """
local now = tonumber(ARGV[1])
local soon = tonumber(ARGV[2])
local prefix = ARGV[3]
local cap = tonumber(ARGV[4])
local pools = #KEYS / 2
local out = {}
for i = 1, pools do
  local queue = KEYS[i]
  local due = redis.call('ZRANGEBYSCORE', queue, '-inf', now, 'LIMIT', 0, cap)
  local running = 0
  for _, id in ipairs(due) do
    if redis.call('EXISTS', prefix .. id) == 1 then running = running + 1 end
  end
  local due_total = redis.call('ZCOUNT', queue, '-inf', now)
  local deferred = redis.call('ZCOUNT', queue, '(' .. now, '+inf')
  local due_soon = redis.call('ZCOUNT', queue, '(' .. now, soon)
  local completed = tonumber(redis.call('GET', KEYS[pools + i]) or '0')
  out[i] = {due_total - running, running, deferred, due_soon, completed}
end
return out
"""


@dataclass(frozen=True)
class QueueDepth:
    task: str
    ready: int
    running: int
    deferred: int
    due_soon: int
    completed: int  # the pool's finished-jobs counter

    @property
    def queued(self) -> int:
        return self.ready + self.running + self.deferred


class QueueSource:
    """Reads every pool's ready/running/deferred counts and completion counter at once."""

    def __init__(self, redis: Redis, tasks: Sequence[str], scan_cap: int = 50_000) -> None:
        self.redis = redis
        self.tasks = tuple(tasks)
        self.scan_cap = scan_cap
        self._script = redis.register_script(_QUEUE_DEPTHS)

    async def read(self, now: float, lead: float) -> dict[str, QueueDepth]:
        queues = [keys.queue_name(task) for task in self.tasks]
        counters = [keys.completed_counter(task) for task in self.tasks]
        rows = await self._script(
            keys=[*queues, *counters],
            args=[int(now * 1000), int((now + lead) * 1000), in_progress_key_prefix, self.scan_cap],
        )
        return {
            task: QueueDepth(task, int(r[0]), int(r[1]), int(r[2]), int(r[3]), int(r[4]))
            for task, r in zip(self.tasks, rows, strict=True)
        }


class RateMeter:
    """Turns successive counter readings into smoothed arrival and per-replica drain rates."""

    def __init__(self, default_drain_rate: float, configured_drain_rate: float | None = None) -> None:
        self.default_drain_rate = default_drain_rate
        self.configured_drain_rate = configured_drain_rate
        self._previous: CounterSample | None = None
        self._arrival: float | None = None
        self._drain: float | None = None

    def observe(self, sample: CounterSample, replicas: int) -> None:
        if self._previous is not None:
            self._arrival = smooth(self._arrival, measured_arrival_rate(self._previous, sample))
            self._drain = smooth(self._drain, measured_drain_rate(self._previous, sample, replicas), weight=0.3)
        self._previous = sample

    @property
    def arrival_rate(self) -> float:
        # The smoothed rate only decays towards zero; below a job per ~15 minutes it is zero.
        rate = self._arrival or 0.0
        return rate if rate >= 1e-3 else 0.0

    @property
    def drain_rate(self) -> float:
        """Configured rate if set, else measured once the pool has been saturated, else the profile default."""
        if self.configured_drain_rate is not None:
            return self.configured_drain_rate
        return self._drain if self._drain is not None else self.default_drain_rate

    @property
    def measured(self) -> bool:
        return self._drain is not None


async def deadline_loads(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    horizon: timedelta,
    submit_share: float = 1.0,
) -> list[DeadlineLoad]:
    """Assignments due within the horizon, their enrolled students and how many have submitted."""
    async with sessions() as session:
        assignments = (
            await session.execute(
                select(Assignment.id, Assignment.course_id, Assignment.deadline).where(
                    Assignment.deadline > now, Assignment.deadline <= now + horizon
                )
            )
        ).all()
        if not assignments:
            return []
        course_ids = {row.course_id for row in assignments}
        # (dict() would take a Result for a mapping: it has .keys())
        enrolled: dict[int, int] = {
            course: count
            for course, count in (
                await session.execute(
                    select(Enrolment.course_id, func.count())
                    .where(Enrolment.course_id.in_(course_ids), Enrolment.role == "student")
                    .group_by(Enrolment.course_id)
                )
            ).tuples()
        }
        # Only students count as submitters; one person's later attempts are not new arrivals.
        submitted: dict[int, int] = {
            assignment: count
            for assignment, count in (
                await session.execute(
                    select(Submission.assignment_id, func.count(func.distinct(Submission.user_id)))
                    .join(Assignment, Assignment.id == Submission.assignment_id)
                    .join(
                        Enrolment,
                        (Enrolment.user_id == Submission.user_id) & (Enrolment.course_id == Assignment.course_id),
                    )
                    .where(Submission.assignment_id.in_([row.id for row in assignments]), Enrolment.role == "student")
                    .group_by(Submission.assignment_id)
                )
            ).tuples()
        }
    return [
        DeadlineLoad(
            assignment_id=row.id,
            deadline=row.deadline.timestamp(),
            enrolled=int(enrolled.get(row.course_id, 0)),
            submitted=int(submitted.get(row.id, 0)),
            submit_share=submit_share,
        )
        for row in assignments
    ]
