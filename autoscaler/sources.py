"""What the autoscaler reads each cycle: queue depths from Redis, deadlines from the database."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.forecast import DeadlineLoad
from autoscaler.policy import CounterSample, measured_arrival_rate, measured_service_time, smooth
from core import keys
from core.deadlines import student_window
from core.models import Assignment, Enrolment, Extension, Submission

# One round trip for every pool: arq keeps running jobs in the queue (score =
# enqueue time) and marks them with an in-progress key; deferred jobs have a
# future score. Scanning the due ids is capped so a huge backlog stays cheap:
# past the cap, the uncounted rest is reported as ready.
_QUEUE_DEPTHS = """
local now = tonumber(ARGV[1])
local soon = tonumber(ARGV[2])
local prefix = ARGV[3]
local cap = tonumber(ARGV[4])
local pools = #KEYS / 4
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
  local busy = tonumber(redis.call('GET', KEYS[2 * pools + i]) or '0')
  local occupied = tonumber(redis.call('GET', KEYS[3 * pools + i]) or '0')
  out[i] = {due_total - running, running, deferred, due_soon, completed, busy, occupied}
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
    busy_ms: int = 0  # milliseconds its jobs ran, summed over jobs
    occupied_ms: int = 0  # milliseconds its workers had a job running, summed over workers

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
        busy = [keys.busy_counter(task) for task in self.tasks]
        occupied = [keys.occupied_counter(task) for task in self.tasks]
        rows = await self._script(
            keys=[*queues, *counters, *busy, *occupied],
            # Milliseconds rounded as arq rounds a job's score (arq.utils.timestamp_ms): truncating put a
            # job enqueued under half a millisecond before `now` among the deferred ones.
            args=[round(now * 1000), round((now + lead) * 1000), in_progress_key_prefix, self.scan_cap],
        )
        return {task: QueueDepth(task, *(int(value) for value in r)) for task, r in zip(self.tasks, rows, strict=True)}


class RateMeter:
    """Turns successive counter readings into a smoothed arrival rate and a learned service time.

    The drain rate of one ready replica is its slots over the service time of
    one slot; until the workers have reported a finished job it is the
    profile's default. Its state is a plain dict (`state()`, `restore()`), so
    a restarted or new leader continues from the last one's measurements.
    """

    def __init__(
        self,
        default_drain_rate: float,
        configured_drain_rate: float | None = None,
        slots: int = 1,
        cpu_bound: bool = False,
    ) -> None:
        self.default_drain_rate = default_drain_rate
        self.configured_drain_rate = configured_drain_rate
        self.slots = max(1, slots)
        self.cpu_bound = cpu_bound
        self._previous: CounterSample | None = None
        self._arrival: float | None = None
        self._service: float | None = None

    def observe(self, sample: CounterSample) -> None:
        if self._previous is not None:
            self._arrival = smooth(self._arrival, measured_arrival_rate(self._previous, sample))
            service = measured_service_time(self._previous, sample, self.cpu_bound, self.slots)
            if service is not None:
                # Many jobs outweigh a few: a cycle with 2 finished jobs barely moves a long-measured rate.
                done = sample.completed - self._previous.completed
                self._service = smooth(self._service, service, weight=done / (done + 20))
        self._previous = sample

    @property
    def arrival_rate(self) -> float:
        # The smoothed rate only decays towards zero; below a job per ~15 minutes it is zero.
        rate = self._arrival or 0.0
        return rate if rate >= 1e-3 else 0.0

    @property
    def drain_rate(self) -> float:
        """Configured rate if set, else learned from the workers' reports, else the profile default."""
        if self.configured_drain_rate is not None:
            return self.configured_drain_rate
        return self.slots / self._service if self._service else self.default_drain_rate

    @property
    def measured(self) -> bool:
        return self._service is not None

    def state(self) -> dict[str, Any]:
        previous = self._previous
        return {
            "previous": None
            if previous is None
            else [previous.at, previous.completed, previous.queued, previous.ready, previous.busy, previous.occupied],
            "arrival": self._arrival,
            "service": self._service,
        }

    def restore(self, state: dict[str, Any]) -> None:
        previous = state.get("previous")
        if isinstance(previous, list) and len(previous) == 6:
            at, completed, queued, ready, busy, occupied = previous
            self._previous = CounterSample(
                float(at), int(completed), int(queued), int(ready), float(busy), float(occupied)
            )
        arrival, service = state.get("arrival"), state.get("service")
        self._arrival = float(arrival) if isinstance(arrival, int | float) else None
        self._service = float(service) if isinstance(service, int | float) and service > 0 else None


async def deadline_loads(
    sessions: async_sessionmaker[AsyncSession],
    now: datetime,
    horizon: timedelta,
    submit_share: float = 1.0,
) -> list[DeadlineLoad]:
    """Students still due within the horizon, grouped by the dates that apply to them.

    An assignment counts until its cut-off (late work still arrives), and a
    student with an extension is due at their own dates (core.deadlines: an
    extension only ever adds time), in a load of its own.
    """
    async with sessions() as session:
        extension_open = exists().where(Extension.assignment_id == Assignment.id, Extension.cutoff_at > now)
        assignments = (
            await session.execute(
                select(
                    Assignment.id, Assignment.course_id, Assignment.opens_at, Assignment.deadline, Assignment.cutoff_at
                ).where(Assignment.deadline <= now + horizon, or_(Assignment.cutoff_at > now, extension_open))
            )
        ).all()
        if not assignments:
            return []
        ids = [row.id for row in assignments]
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
                    .where(Submission.assignment_id.in_(ids), Enrolment.role == "student")
                    .group_by(Submission.assignment_id)
                )
            ).tuples()
        }
        has_submitted = exists().where(
            Submission.assignment_id == Extension.assignment_id, Submission.user_id == Extension.user_id
        )
        extensions = (
            await session.execute(
                select(Extension.assignment_id, Extension.deadline, Extension.cutoff_at, has_submitted.label("done"))
                .join(Assignment, Assignment.id == Extension.assignment_id)
                .join(
                    Enrolment,
                    and_(Enrolment.user_id == Extension.user_id, Enrolment.course_id == Assignment.course_id),
                )
                .where(Extension.assignment_id.in_(ids), Enrolment.role == "student")
            )
        ).all()
    by_assignment = {row.id: row for row in assignments}
    # (assignment, deadline, cutoff) -> [students, of them submitted]
    groups: dict[tuple[int, datetime, datetime], list[int]] = {}
    for ext in extensions:
        row = by_assignment[ext.assignment_id]
        window = student_window(row.opens_at, row.deadline, row.cutoff_at, ext.deadline, ext.cutoff_at)
        if not window.extended:
            continue  # an extension earlier than the assignment's dates changes nothing
        group = groups.setdefault((row.id, window.deadline, window.cutoff_at), [0, 0])
        group[0] += 1
        group[1] += 1 if ext.done else 0
    loads: list[DeadlineLoad] = []
    for row in assignments:
        moved = [(key, counts) for key, counts in groups.items() if key[0] == row.id]
        base_enrolled = int(enrolled.get(row.course_id, 0)) - sum(counts[0] for _, counts in moved)
        base_submitted = int(submitted.get(row.id, 0)) - sum(counts[1] for _, counts in moved)
        dates = [((row.id, row.deadline, row.cutoff_at), [base_enrolled, base_submitted]), *moved]
        for (_, deadline, cutoff), (students, done) in dates:
            if students <= 0 or deadline > now + horizon or cutoff <= now:
                continue
            loads.append(
                DeadlineLoad(
                    assignment_id=row.id,
                    deadline=_epoch(deadline),
                    cutoff=_epoch(cutoff),
                    enrolled=students,
                    submitted=max(0, done),
                    submit_share=submit_share,
                    course_id=row.course_id,
                )
            )
    return loads


def _epoch(moment: datetime) -> float:
    # SQLite hands back naive datetimes: they are UTC, as everything this app stores.
    return moment.replace(tzinfo=UTC).timestamp() if moment.tzinfo is None else moment.timestamp()
