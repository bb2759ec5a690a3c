"""Enqueueing, claiming and finishing jobs in one Redis round trip each, as arq does it in several.

core.queues.enqueue_step writes the job arq's own enqueue_job would (arq reads it back), and
refuses a job id whose job or result still exists; HandinWorker's poll claims a job only if it is
due and no other worker holds it, no more than it has slots for; HandinWorker.finish_job
takes a job off its queue and counts it for the autoscaler in one transaction; a worker with
nothing to do waits for the token a queued job leaves, or for a deferred job's time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix, job_key_prefix, result_key_prefix, retry_key_prefix
from arq.jobs import Job, JobStatus
from arq.worker import Retry, func, get_kwargs
from redis.asyncio import Redis

from core import keys
from core.events import Envelope
from core.queues import enqueue_step, publish_and_enqueue
from core.settings import Settings
from tests.fixtures.conditions import subscribed, until
from tests.fixtures.workers import BurstRunner
from workers import run, scan
from workers.base import step_worker_settings
from workers.run import HandinWorker
from workers.runner import Outcome, StepContext


async def test_an_enqueued_step_is_the_job_arq_itself_would_have_written(arq_redis: ArqRedis) -> None:
    job = await enqueue_step(arq_redis, "scan", 41)
    assert job is not None and job.job_id == keys.job_id("scan", 41)
    info = await Job(job.job_id, arq_redis, _queue_name=keys.queue_name("scan")).info()
    assert info is not None
    assert (info.function, info.args, info.kwargs, info.job_try) == ("scan", (41,), {}, None)
    assert await job.status() == JobStatus.queued
    score = await arq_redis.zscore(keys.queue_name("scan"), job.job_id)
    assert score == round(info.enqueue_time.timestamp() * 1000)
    # arq's default expiry: a day beyond when the job is due.
    ttl_ms = await arq_redis.pttl(job_key_prefix + job.job_id)
    assert arq_redis.expires_extra_ms - 60_000 < ttl_ms <= arq_redis.expires_extra_ms


async def test_a_step_already_queued_or_with_a_result_kept_is_not_queued_again(arq_redis: ArqRedis) -> None:
    assert await enqueue_step(arq_redis, "scan", 42) is not None
    assert await enqueue_step(arq_redis, "scan", 42) is None
    assert await arq_redis.zcard(keys.queue_name("scan")) == 1

    await arq_redis.set(result_key_prefix + keys.job_id("store", 42), b"kept")
    assert await enqueue_step(arq_redis, "store", 42) is None
    assert await arq_redis.zcard(keys.queue_name("store")) == 0


async def test_a_deferred_step_is_scored_for_when_it_is_due(arq_redis: ArqRedis) -> None:
    job = await enqueue_step(arq_redis, "admin", 43, defer_seconds=90)
    assert job is not None
    info = await job.info()
    assert info is not None
    score = await arq_redis.zscore(keys.queue_name("admin"), job.job_id)
    assert score == round(info.enqueue_time.timestamp() * 1000) + 90_000
    assert await job.status() == JobStatus.deferred


def handin_worker(settings: Settings, arq_redis: ArqRedis, started: list[str], max_jobs: int = 10) -> HandinWorker:
    async def handler(_ctx: StepContext) -> Outcome:
        return Outcome()

    worker = HandinWorker(
        **{
            **get_kwargs(step_worker_settings("scan", handler, settings)),
            **{"burst": True, "handle_signals": False, "max_jobs": max_jobs},
        },
        redis_pool=arq_redis,
    )

    async def run_job(job_id: str, score: int) -> None:  # arq's job runner, not what is tested here
        started.append(job_id)

    worker.run_job = run_job  # type: ignore[method-assign]
    return worker


async def test_a_due_job_is_claimed_by_one_worker_and_refused_by_the_next(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    job = await enqueue_step(arq_redis, "scan", 44)
    assert job is not None
    first_started: list[str] = []
    second_started: list[str] = []
    first = handin_worker(settings, arq_redis, first_started)
    second = handin_worker(settings, arq_redis, second_started)

    await first._poll_once()
    await second._poll_once()
    await asyncio.gather(*first.tasks.values())

    assert first_started == [job.job_id] and second_started == []
    hold_ms = await arq_redis.pttl(in_progress_key_prefix + job.job_id)
    assert 0 < hold_ms <= first.in_progress_timeout_s * 1000
    assert second.job_counter == 0 and not second.tasks
    assert await job.status() == JobStatus.in_progress


async def test_a_poll_claims_no_more_jobs_than_the_worker_has_slots_for(
    settings: Settings, arq_redis: ArqRedis
) -> None:
    for submission_id in (57, 58, 59):
        await enqueue_step(arq_redis, "scan", submission_id)
    started: list[str] = []
    worker = handin_worker(settings, arq_redis, started, max_jobs=2)

    assert await worker._poll_once() is None  # a job left over: poll again, do not wait
    await asyncio.gather(*worker.tasks.values())

    assert started == [keys.job_id("scan", 57), keys.job_id("scan", 58)]
    assert not await arq_redis.exists(in_progress_key_prefix + keys.job_id("scan", 59))


async def test_a_job_deferred_or_gone_from_the_queue_is_not_claimed(settings: Settings, arq_redis: ArqRedis) -> None:
    deferred = await enqueue_step(arq_redis, "scan", 45, defer_seconds=60)
    gone = await enqueue_step(arq_redis, "scan", 46)
    assert deferred is not None and gone is not None
    await arq_redis.zrem(keys.queue_name("scan"), gone.job_id)  # finished and removed by another worker
    started: list[str] = []
    worker = handin_worker(settings, arq_redis, started)

    next_due = await worker._poll_once()

    assert started == [] and worker.job_counter == 0
    assert next_due == (await arq_redis.zscore(keys.queue_name("scan"), deferred.job_id)) / 1000
    assert not await arq_redis.exists(in_progress_key_prefix + deferred.job_id)
    assert not await arq_redis.exists(in_progress_key_prefix + gone.job_id)


async def test_a_finished_job_leaves_its_queue_counted_with_the_time_it_ran(
    factory: Any, arq_redis: ArqRedis, run_burst: BurstRunner
) -> None:
    """The autoscaler's service times come from these counters: jobs done, ms busy, ms occupied."""
    world = await factory.world()
    for _ in range(3):
        submission = await factory.submission(world, b"counted\n")
        await enqueue_step(arq_redis, "scan", submission.id)
    await run_burst("scan", scan.handle)  # no scanner here: skipped, and store is queued
    assert await arq_redis.zcard(keys.queue_name("store")) == 3

    async def takes_a_while(_ctx: StepContext) -> Outcome:
        await asyncio.sleep(0.1)  # the job's own work, which the counters measure
        return Outcome()

    worker = await run_burst("store", takes_a_while, max_jobs=3)

    assert worker.jobs_complete == 3
    assert await arq_redis.zcard(keys.queue_name("store")) == 0
    assert int(await arq_redis.get(keys.completed_counter("store"))) == 3
    busy = int(await arq_redis.get(keys.busy_counter("store")))
    occupied = int(await arq_redis.get(keys.occupied_counter("store")))
    # Three jobs of 0.1 s each ran side by side: 0.3 s busy in all, the worker occupied for 0.1 s or more.
    assert busy >= 300 and 100 <= occupied <= busy


async def test_a_step_end_publishes_its_events_and_queues_what_follows_in_one_go(
    arq_redis: ArqRedis, redis: Redis
) -> None:
    topic = keys.submission_topic(50)
    pubsub = await subscribed(redis, keys.events_channel(topic))
    at = "2026-11-30T12:00:00.000Z"
    envelopes = [Envelope(7, topic, "step.queued", at, {"step": "admin"}), Envelope(8, topic, "step.queued", at, {})]
    try:
        await publish_and_enqueue(arq_redis, envelopes, ["admin", "receipt"], 50)
        await publish_and_enqueue(arq_redis, [], ["admin"], 50)  # already queued: not again
        received = []
        async with asyncio.timeout(10):
            while len(received) < 2:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message:
                    received.append(json.loads(message["data"])["seq"])
    finally:
        await pubsub.aclose()

    assert received == [7, 8]
    for step in ("admin", "receipt"):
        info = await Job(keys.job_id(step, 50), arq_redis, _queue_name=keys.queue_name(step)).info()
        assert info is not None and (info.function, info.args) == (step, (50,))
        assert await arq_redis.zcard(keys.queue_name(step)) == 1


@asynccontextmanager
async def waiting_worker(
    arq_redis: ArqRedis,
    ran: list[int],
    monkeypatch: pytest.MonkeyPatch,
    max_jobs: int = 10,
    started_at: dict[int, float] | None = None,
    poll_delay: float = 0.5,
) -> AsyncIterator[HandinWorker]:
    """A long-running scan worker, running for the block, whose wait for a wake token outlasts any
    test: only a token or a deferred job's due time can end it. Its jobs note their submission
    in `ran`, and when they started in `started_at`."""
    monkeypatch.setattr(run, "WAKE_WAIT_SECONDS", 600.0)

    async def scan(_ctx: dict[str, Any], submission_id: int) -> None:
        if started_at is not None:
            started_at[submission_id] = time.time()
        ran.append(submission_id)

    worker = HandinWorker(
        functions=[func(scan, name="scan")],
        queue_name=keys.queue_name("scan"),
        redis_pool=arq_redis,
        handle_signals=False,
        keep_result=0,
        max_jobs=max_jobs,
        poll_delay=poll_delay,
    )
    running = asyncio.create_task(worker.main())
    try:
        yield worker
    finally:
        # A job seen running may still be finishing (its result and counters): stopping the worker
        # would cancel it, so it ends first.
        await asyncio.gather(*worker.tasks.values())
        running.cancel()
        await worker.close()


async def blocked_waiting(redis: Redis) -> None:
    db = redis.connection_pool.connection_kwargs.get("db", 0)

    async def blocked() -> bool:
        clients = await redis.client_list()
        return any(client["cmd"] == "blpop" and int(client["db"]) == db for client in clients)

    await until(blocked, "the worker to wait on its wake list", within=10, poll=0.02)


async def test_a_waiting_worker_is_woken_by_the_job_queued_for_it(
    arq_redis: ArqRedis, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []
    async with waiting_worker(arq_redis, ran, monkeypatch):
        await blocked_waiting(redis)
        await enqueue_step(arq_redis, "scan", 51)
        await until(lambda: ran == [51], "the first job to run", within=10, poll=0.02)
        await blocked_waiting(redis)  # waiting again, not polling
        await publish_and_enqueue(arq_redis, [], ["scan"], 52)
        await until(lambda: ran == [51, 52], "the second job to run", within=10, poll=0.02)


async def test_a_worker_woken_for_one_job_is_straight_back_waiting_for_the_next(
    arq_redis: ArqRedis, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between two jobs a waiting worker does not sit out arq's poll_delay (here far longer than
    the test): a step queued just after another starts when its token comes, not up to a poll
    delay later."""
    ran: list[int] = []
    async with waiting_worker(arq_redis, ran, monkeypatch, poll_delay=600):
        await blocked_waiting(redis)
        await enqueue_step(arq_redis, "scan", 61)
        await until(lambda: ran == [61], "the first job to run", within=10, poll=0.02)
        await enqueue_step(arq_redis, "scan", 62)
        await until(lambda: ran == [61, 62], "the second job to run", within=10, poll=0.02)


async def test_a_waiting_worker_starts_a_deferred_job_when_it_is_due(
    arq_redis: ArqRedis, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[int] = []
    await enqueue_step(arq_redis, "scan", 53, defer_seconds=0.5)  # no token: not due yet
    assert await arq_redis.llen(keys.wake_list(keys.queue_name("scan"))) == 0
    async with waiting_worker(arq_redis, ran, monkeypatch):
        await until(lambda: ran == [53], "the deferred job to run", within=10, poll=0.02)


async def test_a_worker_waits_while_the_jobs_due_are_all_held_by_other_workers(
    arq_redis: ArqRedis, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More jobs due than it has slots, but every one running elsewhere: nothing to poll for."""
    for submission_id in (54, 55, 56):
        await enqueue_step(arq_redis, "scan", submission_id)
        await arq_redis.psetex(in_progress_key_prefix + keys.job_id("scan", submission_id), 60_000, b"1")
    await arq_redis.delete(keys.wake_list(keys.queue_name("scan")))  # the other workers took the tokens
    ran: list[int] = []
    async with waiting_worker(arq_redis, ran, monkeypatch, max_jobs=1) as worker:
        await blocked_waiting(redis)
        assert ran == [] and worker.job_counter == 0


async def test_a_woken_worker_does_not_start_a_deferred_job_before_it_is_due(
    arq_redis: ArqRedis, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poll sent with a wait runs when the wait ends, and reads Redis's clock then: a job due
    later (a retry's backoff) is left to its time, whatever wakes the worker first."""
    ran: list[int] = []
    started_at: dict[int, float] = {}
    async with waiting_worker(arq_redis, ran, monkeypatch, started_at=started_at):
        await blocked_waiting(redis)
        deferred = await enqueue_step(arq_redis, "scan", 57, defer_seconds=0.8)
        assert deferred is not None
        due_at = (await deferred.info()).score / 1000  # type: ignore[union-attr]
        await enqueue_step(arq_redis, "scan", 58)  # due now: its token wakes the worker
        await until(lambda: 58 in ran, "the job due now to run", within=10, poll=0.02)
        await until(lambda: 57 in ran, "the deferred job to run", within=10, poll=0.02)
    assert ran == [58, 57] and started_at[57] >= due_at


async def test_a_waiting_worker_whose_redis_lost_its_scripts_still_takes_the_job_that_wakes_it(
    arq_redis: ArqRedis, redis: Redis, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis forgets its scripts (SCRIPT FLUSH, a failover to a replica that never ran them) while
    the worker waits: the poll sent with the wait is refused, and the worker polls again at once,
    loading the script, rather than report Redis unreachable and leave the job a second."""
    ran: list[int] = []
    async with waiting_worker(arq_redis, ran, monkeypatch):
        await blocked_waiting(redis)
        await redis.script_flush()
        with caplog.at_level(logging.WARNING, logger="workers.run"):
            await enqueue_step(arq_redis, "scan", 59)
            await until(lambda: ran == [59], "the job to run", within=10, poll=0.02)
            await blocked_waiting(redis)  # waiting again, its poll's script loaded
            await enqueue_step(arq_redis, "scan", 60)
            await until(lambda: ran == [59, 60], "the next job to run", within=10, poll=0.02)
    assert [record.getMessage() for record in caplog.records if record.name == "workers.run"] == []


def recording_worker(arq_redis: ArqRedis, runs: list[tuple[int, tuple[Any, ...]]], *, abortable: bool) -> HandinWorker:
    """A burst worker of one function that asks for a second try the first time it runs."""

    async def flaky(ctx: dict[str, Any], *args: Any) -> str:
        runs.append((ctx["job_try"], args))
        if ctx["job_try"] == 1:
            raise Retry(defer=0)
        return "done"

    return burst_worker_of(arq_redis, func(flaky, name="flaky", max_tries=3), "handin:test-claimed", abortable)


def burst_worker_of(arq_redis: ArqRedis, function: Any, queue_name: str, abortable: bool = False) -> HandinWorker:
    """A burst worker of one function, polling again at once while there is work (a poll_delay of 0)."""
    return HandinWorker(
        functions=[function],
        queue_name=queue_name,
        redis_pool=arq_redis,
        burst=True,
        handle_signals=False,
        poll_delay=0,
        allow_abort_jobs=abortable,
    )


@pytest.mark.parametrize("abortable", [False, True], ids=["read-at-claim", "abortable-reads-itself"])
async def test_a_claimed_job_runs_with_its_arguments_and_each_try_counted_once(
    arq_redis: ArqRedis, abortable: bool
) -> None:
    # The claim reads the job and counts the try (arq's run_job did both in a round trip of its own);
    # a worker that may abort jobs leaves that read to run_job.
    runs: list[tuple[int, tuple[Any, ...]]] = []
    worker = recording_worker(arq_redis, runs, abortable=abortable)
    job = await arq_redis.enqueue_job("flaky", 7, "seven", _queue_name="handin:test-claimed")
    assert job is not None

    await worker.main()

    assert runs == [(1, (7, "seven")), (2, (7, "seven"))]
    result = await job.result_info()
    assert result is not None and result.success and result.result == "done" and result.job_try == 2
    assert not await arq_redis.exists(retry_key_prefix + job.job_id)  # cleared with the finished job


async def test_a_claimed_job_whose_data_expired_fails_as_expired(arq_redis: ArqRedis) -> None:
    runs: list[tuple[int, tuple[Any, ...]]] = []
    worker = recording_worker(arq_redis, runs, abortable=False)
    job = await arq_redis.enqueue_job("flaky", 8, _queue_name="handin:test-claimed")
    assert job is not None
    await arq_redis.delete(job_key_prefix + job.job_id)  # expired while it waited in the queue

    await worker.main()

    assert runs == []
    result = await job.result_info()
    assert result is not None and not result.success and "job expired" in str(result.result)
    assert await arq_redis.zcard("handin:test-claimed") == 0


async def evalsha_calls(redis: Redis) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_burst_worker_waits_for_its_running_job_and_a_retrys_due_time_instead_of_polling(
    arq_redis: ArqRedis, redis: Redis
) -> None:
    """Polling again at once while a job runs would spin a core the job needs (a poll_delay of 0, as
    `run_burst` and quick drains use). The job takes its time and asks for a retry 0.2 s later:
    the worker polls when it starts, when each run ends and when the retry is due."""
    runs: list[int] = []

    async def slow(ctx: dict[str, Any]) -> str:
        runs.append(ctx["job_try"])
        await asyncio.sleep(0.3)  # the job's own work
        if ctx["job_try"] == 1:
            raise Retry(defer=0.2)
        return "done"

    worker = burst_worker_of(arq_redis, func(slow, name="slow", max_tries=2), "handin:test-burst")
    job = await arq_redis.enqueue_job("slow", _queue_name="handin:test-burst")
    assert job is not None
    before = await evalsha_calls(redis)

    await worker.main()

    assert runs == [1, 2]
    result = await job.result_info()
    assert result is not None and result.success and result.result == "done"
    assert await evalsha_calls(redis) - before < 12  # spinning: thousands in the 0.8 s
