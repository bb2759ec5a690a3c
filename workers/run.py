"""`handin worker <task>`: run one task's arq worker in this process."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from typing import Any

from arq.constants import (
    abort_jobs_ss,
    in_progress_key_prefix,
    job_key_prefix,
    result_key_prefix,
    retry_key_prefix,
)
from arq.utils import timestamp_ms, to_ms
from arq.worker import get_kwargs
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from core import keys
from core.event_loop import event_loop_factory
from core.logs import configure_logging
from core.settings import get_settings
from workers.base import IdlePollingWorker, count_finished_job
from workers.health import WorkerHealth, start_health_server

log = logging.getLogger(__name__)

WORKER_TASKS = (*keys.TASKS, keys.MAINTENANCE_TASK)
# After a failed poll (Redis gone) wait this long before the next, instead of arq's poll_delay.
REDIS_RETRY_SECONDS = 1.0
# arq's claim of a queued job, atomic as its WATCH/MULTI is: not if another worker holds it (its
# in-progress key), not if it left the queue or was deferred into the future; else hold it for the
# given milliseconds. KEYS: in-progress key, queue; ARGV: job id, now ms, hold ms. Answers the job's
# score (when it was due), or nil.
CLAIM_JOB = AsyncScript(
    None,  # type: ignore[arg-type]  # the client is given per call
    b"""
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local score = redis.call('ZSCORE', KEYS[2], ARGV[1])
if not score or tonumber(score) > tonumber(ARGV[2]) then return false end
redis.call('PSETEX', KEYS[1], ARGV[3], '1')
return score
""",
)


class HandinWorker(IdlePollingWorker):
    """arq's worker, kept alive through a Redis outage and watched by /healthz.

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

    async def _poll_iteration(self) -> None:
        self._polling = True
        try:
            await super()._poll_iteration()
        except (RedisError, OSError) as error:
            log.warning("redis unreachable; polling again", extra={"queue": self.queue_name, "error": str(error)})
            await asyncio.sleep(REDIS_RETRY_SECONDS)

    async def start_jobs(self, job_ids: list[bytes]) -> None:
        """arq's start_jobs, each job claimed by one script call (CLAIM_JOB) instead of four round trips."""
        for job_id_bytes in job_ids:
            await self.sem.acquire()
            if self.job_counter >= self.max_jobs:
                self.sem.release()
                return
            self.job_counter += 1
            job_id = job_id_bytes.decode()
            try:
                score = await CLAIM_JOB(
                    keys=[in_progress_key_prefix + job_id, self.queue_name],
                    args=[job_id, timestamp_ms(), int(self.in_progress_timeout_s * 1000)],
                    client=self.pool,
                )
            except BaseException:  # Redis failed (the poll loop says so and polls again): give the slot back
                self.job_counter -= 1
                self.sem.release()
                raise
            if score is None:  # running elsewhere, already finished, or deferred again meanwhile
                self.job_counter -= 1
                self.sem.release()
                continue
            task = self.loop.create_task(self.run_job(job_id, int(float(score))))
            task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
            self.tasks[job_id] = task

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
        (count_finished_job): one round trip fewer per job, and a job leaves its queue and is
        counted as finished at one instant."""
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
            await tr.execute()


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
    log.info("starting worker", extra={"task": task, "queue": keys.queue_name(task), "burst": burst})
    worker.run()
