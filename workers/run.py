"""`handin worker <task>`: run one task's arq worker in this process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import math
import time
from contextvars import ContextVar
from typing import Any, cast

from arq.connections import ArqRedis
from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms, to_ms
from arq.worker import Worker, get_kwargs
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError

from core import keys
from core.event_loop import event_loop_factory
from core.events import HELD_BACK, HeldBack, queue_publishes, take_held_back
from core.garbage import collect_garbage_rarely
from core.logs import configure_logging
from core.queues import CARRIED_TO_FINISH, queue_delivery
from core.settings import get_settings
from workers.base import count_finished_job
from workers.health import WorkerHealth, start_health_server

log = logging.getLogger(__name__)

WORKER_TASKS = (*keys.TASKS, keys.MAINTENANCE_TASK)
# After a failed poll (Redis gone) wait this long before the next, instead of arq's poll_delay.
REDIS_RETRY_SECONDS = 1.0
# Reads the queue and claims what is due, as arq's ZRANGEBYSCORE and its claim of each job (WATCH,
# EXISTS, MULTI/EXEC) do in a round trip or more per job: a due job nobody holds (no in-progress key)
# is held for the given milliseconds, up to the worker's free slots. KEYS: queue; ARGV: now ms (or
# SERVER_TIME: Redis's clock as the script runs), offset, count, hold ms, free slots, in-progress key
# prefix (the in-progress keys are arq's, named from the job ids read, so not passed as KEYS: handin's
# Redis is never a cluster). Answers the claimed jobs as id, score pairs, then 1 if every due job
# read was tried (0: out of slots first), then the score of the earliest job not yet due (-1: none).
# With ARGV 7 and 8 (arq's job and retry key prefixes) it also does for each job claimed what arq's
# run_job opens with (GET the job, INCR and EXPIRE its try count) and answers the job ('' if it has
# expired) and its try after its score.
SERVER_TIME = "redis-time"  # as the script spells it
POLL_AND_CLAIM = AsyncScript(
    None,  # type: ignore[arg-type]  # the client is given per call
    b"""
local now = ARGV[1]
if now == 'redis-time' then
  local time = redis.call('TIME')
  now = tostring(time[1] * 1000 + math.floor(time[2] / 1000))
end
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', ARGV[2], ARGV[3])
local answer = {}
local free = tonumber(ARGV[5])
local tried_all = 1
for i = 1, #due, 2 do
  local held = ARGV[6] .. due[i]
  if redis.call('EXISTS', held) == 0 then
    if free == 0 then
      tried_all = 0
      break
    end
    redis.call('PSETEX', held, ARGV[4], '1')
    answer[#answer + 1] = due[i]
    answer[#answer + 1] = due[i + 1]
    if ARGV[7] then
      answer[#answer + 1] = redis.call('GET', ARGV[7] .. due[i]) or ''
      answer[#answer + 1] = redis.call('INCR', ARGV[8] .. due[i])
      redis.call('EXPIRE', ARGV[8] .. due[i], 88400)  -- arq's expiry of a try count
    end
    free = free - 1
  end
end
local later = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
answer[#answer + 1] = tried_all
answer[#answer + 1] = later[2] or '-1'
return answer
""",
)
# A job's data and try number as POLL_AND_CLAIM read them, for the task that runs the job (see
# HandinWorker.pool): taken by the first read of the pool in that task, run_job's own.
_CLAIMED_READ: ContextVar[tuple[bytes | None, int] | None] = ContextVar("claimed_read", default=None)


class _ReadAtClaim:
    """A pool whose one transaction is arq's opening read of a job (GET the job, INCR and EXPIRE its
    try count), answered with what the claim read: that read costs no round trip of its own."""

    def __init__(self, job: bytes | None, job_try: int) -> None:
        self.answer = [job, job_try, True]

    def pipeline(self, transaction: bool = True) -> _ReadAtClaim:
        return self

    async def __aenter__(self) -> _ReadAtClaim:
        return self

    async def __aexit__(self, *_: object) -> None:
        return None

    def get(self, _key: str) -> None:
        return None

    def incr(self, _key: str) -> None:
        return None

    def expire(self, _key: str, _seconds: int) -> None:
        return None

    async def execute(self) -> list[Any]:
        return self.answer


# The longest a worker with nothing to do waits for a wake token before it polls anyway: what a job
# queued without one (arq's own enqueue_job, a job whose worker died) may wait at most.
WAKE_WAIT_SECONDS = 1.0


class HandinWorker(Worker):
    """arq's worker, woken by the jobs queued for it, kept alive through a Redis outage and watched by /healthz.

    arq polls its queue every poll_delay (0.05 s), busy or not: each poll is a
    wake-up and a round trip, ~0.6 ms of CPU here, more than a no-op job's own
    Redis traffic. This worker polls while it finds work; once a poll has
    claimed everything that was due, it waits on the queue's wake list (a token
    per job queued to run now, core.queues) until a token comes, the earliest
    deferred job is due, or WAKE_WAIT_SECONDS pass, and polls as the wait ends:
    the poll goes with the wait (one round trip), and while it finds itself
    caught up it waits again at once. Full (max_jobs running) or with more due
    than it could take, it polls every poll_delay as arq does.

    arq lets a Redis error out of its poll loop, which ends the process and
    cancels every running job (burning a try each). Here the poll is tried again
    until Redis is back, and the liveness probe says Redis is unreachable meanwhile.
    """

    def __init__(self, *args: Any, health: WorkerHealth | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.health = health

    async def main(self) -> None:
        watcher = asyncio.create_task(self.health.watch(lambda: self._pool)) if self.health else None
        try:
            while True:
                try:
                    await super().main()
                    return
                except (RedisError, OSError) as error:
                    # Lost while arq was still starting (its Redis INFO, before the first poll): start again.
                    # Once polling, _poll_iteration keeps the loop alive itself.
                    if self.burst or self._polling:
                        raise
                    log.warning("redis unreachable at start; trying again", extra={"error": str(error)})
                    await asyncio.sleep(REDIS_RETRY_SECONDS)
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher

    _polling = False

    @property
    def pool(self) -> ArqRedis:
        """arq's pool; in a job's task, the first time (run_job's read of the job), what the claim read."""
        claimed = _CLAIMED_READ.get()
        if claimed is None:
            return cast(ArqRedis, self._pool)
        _CLAIMED_READ.set(None)
        return cast(ArqRedis, _ReadAtClaim(*claimed))

    async def _poll_iteration(self) -> None:
        self._polling = True
        try:
            next_due = await self._poll_once()
            if self.burst:
                if next_due is not None:
                    await self._wait_in_burst(next_due)
                return
            # Caught up, it waits, and the poll sent with the wait says whether it is caught up
            # again: then it waits again at once. arq's loop would first sleep out the rest of its
            # poll_delay, up to 50 ms more before a job woken for here starts.
            while next_due is not None and self._free_to_claim():
                answer = await self._wait_for_work(next_due)
                if answer is None:
                    return
                next_due = await self._take_claimed(answer)
        except (RedisError, OSError) as error:
            log.warning("redis unreachable; polling again", extra={"queue": self.queue_name, "error": str(error)})
            await asyncio.sleep(REDIS_RETRY_SECONDS)

    def _free_to_claim(self) -> bool:
        return self.allow_pick_jobs and self.job_counter < self.max_jobs

    async def _poll_once(self) -> float | None:
        """arq's poll iteration, claiming with POLL_AND_CLAIM. Answers, once every due job was taken
        (by this worker or another), when the earliest deferred job is due (epoch seconds,
        inf if none); None while there is more to take."""
        claim_args = self._claim_args()
        if claim_args is None:
            return None
        answer = None
        if self._free_to_claim():
            answer = await POLL_AND_CLAIM(keys=[self.queue_name], args=claim_args, client=self._pool)
        return await self._take_claimed(answer)

    def _claim_args(self, now: str | int | None = None) -> list[str | int] | None:
        """POLL_AND_CLAIM's arguments for this worker now (None: a burst worker that has started its last job)."""
        count = self.queue_read_limit
        if self.burst and self.max_burst_jobs >= 0:
            count = min(self.max_burst_jobs - self._jobs_started(), count)
            if count < 1:
                return None
        args: list[str | int] = [timestamp_ms() if now is None else now, self._queue_read_offset, count]
        args += [int(self.in_progress_timeout_s * 1000), self.max_jobs - self.job_counter, in_progress_key_prefix]
        return [*args, *self._read_at_claim()]

    def _read_at_claim(self) -> list[str]:
        # Aborting jobs makes run_job's opening read a different one: then it reads for itself.
        return [] if self.allow_abort_jobs else [job_key_prefix, retry_key_prefix]

    async def _take_claimed(self, answer: list[Any] | None) -> float | None:
        """Start the jobs a POLL_AND_CLAIM answer claimed (None: nothing was polled), then do the
        rest of arq's poll iteration. Answers as _poll_once does."""
        caught_up: float | None = None
        if answer is not None:
            *claimed, tried_all, later = answer
            read_jobs = bool(self._read_at_claim())
            width = 4 if read_jobs else 2
            for at in range(0, len(claimed), width):
                job_id, score = claimed[at].decode(), int(float(claimed[at + 1]))
                read = (claimed[at + 2] or None, int(claimed[at + 3])) if read_jobs else None
                await self._run_claimed(job_id, score, read)
            # Every due job tried: taken here, or held by another worker (its token spent or to be).
            if tried_all == 1:
                caught_up = math.inf if later == b"-1" else float(later) / 1000
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, task in list(self.tasks.items()):
            if task.done():
                del self.tasks[job_id]
                task.result()  # arq's way of letting run_job's own errors out
        await self.heart_beat()
        return caught_up

    async def _wait_for_work(self, next_due: float) -> list[Any] | None:
        """Wait for a wake token, the earliest deferred job or WAKE_WAIT_SECONDS, whichever comes
        first, and poll as the wait ends: the poll is sent with the wait (Redis runs it as soon as
        the BLPOP returns), a round trip fewer per wake. Answers the poll's answer (None if there
        was no wait: the next iteration polls)."""
        timeout = min(WAKE_WAIT_SECONDS, next_due - time.time())
        if timeout <= 0.001:
            return None
        # The poll reads Redis's clock as it runs: the time here is the wait's start, and a job that
        # fell due during the wait would not look due by it.
        claim_args = self._claim_args(now=SERVER_TIME)
        assert claim_args is not None  # a long-running worker's
        async with self._pool.pipeline(transaction=False) as pipe:
            # Redis 6 and later take a fractional timeout; redis-py's hints say int.
            pipe.blpop([keys.wake_list(self.queue_name)], timeout=timeout)  # type: ignore[arg-type]
            pipe.evalsha(POLL_AND_CLAIM.sha, 1, self.queue_name, *claim_args)
            token, answer = await pipe.execute(raise_on_error=False)
        if isinstance(token, Exception):
            raise token
        if isinstance(answer, NoScriptError):
            # Redis restarted or its scripts flushed during the wait; POLL_AND_CLAIM's own call loads it.
            return await POLL_AND_CLAIM(keys=[self.queue_name], args=self._claim_args(), client=self._pool)
        if isinstance(answer, Exception):
            raise answer
        return cast(list[Any], answer)

    async def _wait_in_burst(self, next_due: float) -> None:
        """A burst worker that took everything due waits for what can change that: one of its own
        jobs ending (a retry, or the queue's last job done) or a deferred job falling due.
        Polling again at once (a poll_delay of 0) would spin: a core taken from the jobs it runs,
        and from their threads (file reads, SQLite), each of which then waits for the GIL."""
        timeout = min(WAKE_WAIT_SECONDS, next_due - time.time())
        running = [task for task in self.tasks.values() if not task.done()]
        if running:
            await asyncio.wait(running, timeout=max(timeout, 0.0), return_when=asyncio.FIRST_COMPLETED)
        elif math.isfinite(next_due) and timeout > 0.001:
            await asyncio.sleep(timeout)

    async def _run_claimed(self, job_id: str, score: int, read: tuple[bytes | None, int] | None) -> None:
        """What arq's start_jobs does with a job it claimed. POLL_AND_CLAIM claimed no more than
        this worker's free slots, so the semaphore has room and is taken without a wait."""
        await self.sem.acquire()
        self.job_counter += 1
        task = self.loop.create_task(self._run_job_read_at_claim(job_id, score, read))
        task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
        self.tasks[job_id] = task

    async def _run_job_read_at_claim(self, job_id: str, score: int, read: tuple[bytes | None, int] | None) -> None:
        # Set in the job's own task (a context of its own): its first read of the pool is run_job's.
        _CLAIMED_READ.set(read)
        CARRIED_TO_FINISH.set([])  # filled by the step's end (workers.runner), sent by finish_job
        HELD_BACK.set(HeldBack())  # a quick step's start, sent by finish_job before its end (workers.runner)
        await self.run_job(job_id, score)

    async def finish_job(
        self,
        job_id: str,
        finish: bool,
        result_data: bytes | None,
        result_timeout_s: float | None,
        keep_result_forever: bool,
        incr_score: int | None,
        keep_in_progress: float | None,
    ) -> None:
        """arq's finish_job with the job's counts for the autoscaler in the same MULTI/EXEC
        (count_finished_job), the events it held back (a quick step's start, HELD_BACK) and what
        the step's end publishes and queues (CARRIED_TO_FINISH): three round trips fewer per job,
        and a job leaves its queue, is counted as finished and queues the steps it made ready at
        one instant."""
        async with self.pool.pipeline(transaction=True) as tr:
            delete_keys = []
            in_progress_key = in_progress_key_prefix + job_id
            if keep_in_progress is None:
                delete_keys += [in_progress_key]
            else:
                tr.pexpire(in_progress_key, to_ms(keep_in_progress))
            if finish:
                if result_data:
                    expire = None if keep_result_forever else result_timeout_s
                    tr.set(result_key_prefix + job_id, result_data, px=to_ms(expire))
                delete_keys += [retry_key_prefix + job_id, job_key_prefix + job_id]
                tr.zrem(abort_jobs_ss, job_id)
                tr.zrem(self.queue_name, job_id)
            elif incr_score:
                tr.zincrby(self.queue_name, incr_score, job_id)
            if delete_keys:
                tr.delete(*delete_keys)
            count_finished_job(tr, self.ctx, job_id)
            queue_publishes(tr, take_held_back())
            for delivery in CARRIED_TO_FINISH.get() or ():
                queue_delivery(tr, cast(ArqRedis, self._pool), delivery)
            await tr.execute()


# arq logs every job twice at INFO, its start and its success, as free text: a step's end is logged
# once instead, with its fields (workers.base, "step ran"). arq's other lines (retries, failures) stay.
_ARQ_ROUTINE_LINES = frozenset({"%6.2fs → %s(%s)%s", "%6.2fs ← %s ● %s"})


def _not_routine(record: logging.LogRecord) -> bool:
    return record.msg not in _ARQ_ROUTINE_LINES


def quiet_arq_routine_lines() -> None:
    """Drop arq's per-job start and success lines (once per process, however often called)."""
    arq_log = logging.getLogger("arq.worker")
    if _not_routine not in arq_log.filters:
        arq_log.addFilter(_not_routine)


def load_worker_settings(task: str) -> type:
    if task not in WORKER_TASKS:
        raise SystemExit(f"unknown task {task!r}; choose one of: {', '.join(WORKER_TASKS)}")
    module = importlib.import_module(f"workers.{task}")
    settings_cls: type = module.WorkerSettings
    return settings_cls


def run_worker(task: str, burst: bool = False) -> None:
    configure_logging()
    serve(task, load_worker_settings(task), burst)


def serve(task: str, settings_cls: type, burst: bool = False) -> None:
    """Run the worker described by `settings_cls` until SIGTERM (or, in burst mode, an empty queue)."""
    section = get_settings().worker
    quiet_arq_routine_lines()
    health = None
    if section.http_port and not burst:
        health = WorkerHealth(section.health_stale_seconds)
        # Liveness and Prometheus scrape both hit this listener. Several workers
        # on one machine (the local autoscaler backend) share a port: the first wins.
        try:
            start_health_server(section.http_port, health)
        except OSError as error:
            log.info("metrics port taken; serving none", extra={"port": section.http_port, "error": str(error)})
    loop_factory = event_loop_factory(section.event_loop)
    if loop_factory is not None:
        # arq's Worker takes the thread's current loop when it is made, and runs on it.
        asyncio.set_event_loop(loop_factory())
    worker = HandinWorker(**{**get_kwargs(settings_cls), "burst": burst}, health=health)
    # A similarity check alone creates thousands of objects: with CPython's thresholds its worker
    # spent ~2 ms a submission collecting, most of it re-walking the imported modules.
    collect_garbage_rarely()
    log.info("starting worker", extra={"task": task, "queue": keys.queue_name(task), "burst": burst})
    worker.run()
