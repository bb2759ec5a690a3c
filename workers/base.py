"""What every worker process shares: its arq settings, start-up and counters.

arq reads only a settings class's *own* attributes, so `worker_settings()`
builds a fresh class per task with every attribute written onto it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from arq import func
from arq.cron import CronJob
from arq.worker import Function
from redis.asyncio.client import Pipeline

from core import keys
from core.db import make_engine, make_sessionmaker
from core.pipeline import STEPS_BY_NAME
from core.queues import redis_settings
from core.settings import Settings, get_settings
from workers.runner import Handler, run_step

log = logging.getLogger(__name__)

# A killed worker's job is retried by arq too: leave room above our own max_tries.
ARQ_EXTRA_TRIES = 5
# arq's `job_timeout` for functions that declare none (we set none on the worker).
ARQ_DEFAULT_JOB_TIMEOUT = 300


async def startup(ctx: dict[str, Any]) -> None:
    from core.storage import make_storage

    settings: Settings = ctx.setdefault("settings", get_settings())
    ctx["engine"] = make_engine(settings.database_url)
    ctx["sessions"] = make_sessionmaker(ctx["engine"])
    ctx["storage"] = make_storage(settings)
    log.info("worker started", extra={"queue": ctx.get("queue_name")})


# What a worker module keeps open per process (an SMTP connection) and closes when the worker stops.
_SHUTDOWN_HOOKS: list[Callable[[], Awaitable[None]]] = []


def on_worker_shutdown(hook: Callable[[], Awaitable[None]]) -> None:
    """Run `hook` when a worker of this process stops (once per hook)."""
    if hook not in _SHUTDOWN_HOOKS:
        _SHUTDOWN_HOOKS.append(hook)


async def shutdown(ctx: dict[str, Any]) -> None:
    for hook in _SHUTDOWN_HOOKS:
        try:
            await hook()
        except Exception:
            log.exception("worker shutdown hook failed")
    storage = ctx.get("storage")
    if storage is not None:
        await storage.close()
    engine = ctx.get("engine")
    if engine is not None:
        await engine.dispose()


class BusyClock:
    """How long this worker's jobs ran, and how long it had any job running at all."""

    def __init__(self) -> None:
        self.occupied_since = 0.0
        self.started: dict[str, float] = {}  # the running jobs: job id -> when it started

    def start(self, job_id: str) -> None:
        now = time.monotonic()
        if not self.started:
            self.occupied_since = now
        self.started[job_id] = now

    def end(self, job_id: str) -> tuple[float, float] | None:
        """(this job's run time, the time the worker was occupied if it is now idle, else 0);
        None for a job that never started (arq failed it before running it)."""
        started = self.started.pop(job_id, None)
        if started is None:
            return None
        now = time.monotonic()
        return now - started, (0.0 if self.started else now - self.occupied_since)


async def start_job_clock(ctx: dict[str, Any]) -> None:
    # ctx is this job's own copy of the worker's; the clock in it is shared by every job.
    clock: BusyClock | None = ctx.get("busy_clock")
    if clock is not None:
        clock.start(ctx["job_id"])


def count_finished_job(pipe: Pipeline, ctx: dict[str, Any], job_id: str) -> None:
    """Feeds the autoscaler: jobs finished, and the seconds they and the worker were busy (its
    service time). Queued on the transaction that takes the job off its queue (HandinWorker's
    finish_job), so a job is always either queued or counted as finished."""
    task = ctx.get("task")
    if not task:
        return
    pipe.incr(keys.completed_counter(task))
    clock: BusyClock | None = ctx.get("busy_clock")
    ended = clock.end(job_id) if clock is not None else None
    if ended is not None:
        ran, occupied = ended
        pipe.incrby(keys.busy_counter(task), round(ran * 1000))
        if occupied > 0:
            pipe.incrby(keys.occupied_counter(task), round(occupied * 1000))


def step_function(task: str, handler: Handler, settings: Settings) -> Function:
    policy = settings.retry_policy(task)

    async def job(ctx: dict[str, Any], submission_id: int) -> str:
        started = time.monotonic()
        outcome = await run_step(ctx, task, submission_id, handler)
        # The job's one log line (arq's own start and success lines are filtered: workers.run).
        log.info(
            "step ran",
            extra={
                "task": task,
                "submission_id": submission_id,
                "outcome": outcome,
                "seconds": round(time.monotonic() - started, 3),
                "job_try": ctx.get("job_try"),
            },
        )
        return outcome

    # arq's own timeout backs up the runner's: the runner times out first and retries.
    timeout = policy.timeout_seconds + settings.worker.job_timeout_margin_seconds
    return func(job, name=task, timeout=timeout, max_tries=policy.max_tries + ARQ_EXTRA_TRIES)


def completion_wait(functions: Sequence[Function], cron_jobs: Sequence[CronJob], settings: Settings) -> int:
    """Seconds a stopping worker lets running jobs finish: the longest time limit among its jobs.

    That is the longest job it may be running when SIGTERM arrives; waiting less
    cancels it and burns a try. HANDIN_WORKER__JOB_COMPLETION_WAIT_SECONDS overrides it.
    """
    override = settings.worker.job_completion_wait_seconds
    if override is not None:
        return math.ceil(override)
    # A job without a timeout of its own runs under arq's default one.
    declared = [job.timeout_s for job in functions] + [job.timeout_s for job in cron_jobs]
    limits = [ARQ_DEFAULT_JOB_TIMEOUT if timeout is None else timeout for timeout in declared]
    return math.ceil(max(limits, default=0))


def worker_settings(
    task: str,
    functions: Sequence[Function],
    settings: Settings | None = None,
    cron_jobs: Sequence[CronJob] = (),
) -> type:
    """The arq settings class for one task's worker pool."""
    settings = settings or get_settings()
    section = settings.worker
    attributes: dict[str, Any] = {
        "functions": list(functions),
        "cron_jobs": list(cron_jobs),
        "queue_name": keys.queue_name(task),
        "redis_settings": redis_settings(settings.redis_url),
        "on_startup": startup,
        "on_shutdown": shutdown,
        "on_job_start": start_job_clock,
        "ctx": {"settings": settings, "task": task, "busy_clock": BusyClock()},
        "max_jobs": section.max_jobs,
        "poll_delay": section.poll_delay_seconds,
        "queue_read_limit": max(section.queue_read_limit, section.max_jobs),
        "job_completion_wait": completion_wait(functions, cron_jobs, settings),
        "keep_result": 0,
        "health_check_key": keys.worker_heartbeat(task),
        "health_check_interval": 10,
    }
    profile = STEPS_BY_NAME[task].profile if task in STEPS_BY_NAME else "io"
    attributes["profile"] = profile
    return type(f"{task.title()}WorkerSettings", (), attributes)


def step_worker_settings(task: str, handler: Handler, settings: Settings | None = None) -> type:
    settings = settings or get_settings()
    return worker_settings(task, [step_function(task, handler, settings)], settings)
