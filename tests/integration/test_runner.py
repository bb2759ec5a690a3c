"""The shared step runner, driven through real arq burst workers on the `store` queue.

The handlers here are stand-ins written for each test (named for what they
do); what is under test is the runner around them: states, events, retries,
time limits and repeated deliveries.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from datetime import timedelta
from typing import Any

import pytest
from redis.asyncio import Redis
from sqlalchemy import update

from core import keys
from core.clock import isoformat, utcnow
from core.db import postgres_engine
from core.models import SubmissionStep
from core.queues import enqueue_step, job_exists
from core.settings import Settings
from tests.fixtures.conditions import subscribed
from tests.fixtures.pipeline import events, quick_retries, step_events, step_row, step_states, submission_row
from tests.fixtures.workers import burst_worker
from workers import runner, scan
from workers.run import quiet_arq_routine_lines
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError

FAN_OUT = ("similarity", "admin", "receipt", "thumbnail")
# A step's events when its first attempt is retried and its second succeeds.
RETRIED_ONCE = ["step.queued", "step.running", "step.retrying", "step.running", "step.succeeded"]


async def _at_store(factory: Any, arq_redis: Any, run_burst: Any) -> Any:
    """A submission whose scan is done (skipped: no scanner) and whose store job is queued."""
    world = await factory.world()
    submission = await factory.submission(world, b"runner test\n")
    await enqueue_step(arq_redis, "scan", submission.id)
    await run_burst("scan", scan.handle)
    assert (await step_row(factory.sessions, submission.id, "store")).state == "queued"
    return submission


async def _set_store_row(sessions: Any, submission_id: int, **values: Any) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == "store")
            .values(**values)
        )


async def test_a_handler_that_hangs_past_its_time_limit_is_retried_not_dropped(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    """arq would fail a job that hits its own timeout; the runner's shorter limit turns it into a retry."""
    quick_retries(settings, "store", timeout_seconds=0.5)
    submission = await _at_store(factory, arq_redis, run_burst)
    attempts: list[int] = []

    async def hangs_on_first_attempt(ctx: StepContext) -> Outcome:
        attempts.append(ctx.attempt)
        if ctx.attempt == 1:
            await asyncio.sleep(60)
        return Outcome(result={"attempt": ctx.attempt})

    started = time.monotonic()
    worker = await run_burst("store", hangs_on_first_attempt)

    assert time.monotonic() - started < 10
    assert attempts == [1, 2]
    assert (worker.jobs_retried, worker.jobs_failed, worker.jobs_complete) == (1, 0, 1)
    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts, row.result) == ("succeeded", 2, {"attempt": 2})
    assert await step_events(sessions, submission.id, "store") == RETRIED_ONCE
    retrying = await events(sessions, f"submission.{submission.id}", "step.retrying")
    assert retrying[0].data["error"] == "timed out"


async def test_what_a_page_is_sent_is_the_audit_trail_in_order_without_gaps(
    factory: Any, sessions: Any, arq_redis: Any, run_burst: Any, redis: Redis
) -> None:
    """A step's start (one statement on PostgreSQL) and end publish the events they wrote, with their seq."""
    submission = await _at_store(factory, arq_redis, run_burst)
    topic = keys.submission_topic(submission.id)
    pubsub = await subscribed(redis, keys.events_channel(topic))
    try:

        async def succeeds(ctx: StepContext) -> Outcome:
            return Outcome(result={"stored": True})

        await run_burst("store", succeeds)
        written = await events(sessions, topic)
        sent: list[dict[str, Any]] = []
        async with asyncio.timeout(10):
            while len(sent) < 1 or sent[-1]["seq"] < written[-1].seq:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message:
                    sent.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()

    assert [event.seq for event in written] == list(range(1, len(written) + 1))
    trail = {event.seq: (event.type, event.data, isoformat(event.at)) for event in written}
    assert [(envelope["type"], envelope["data"], envelope["at"]) for envelope in sent] == [
        trail[envelope["seq"]] for envelope in sent
    ]
    store_events = [envelope["type"] for envelope in sent if envelope["data"].get("step") == "store"]
    assert store_events == ["step.running", "step.succeeded"]
    [running] = [envelope for envelope in sent if envelope["type"] == "step.running"]
    assert running["data"] == {"step": "store", "attempt": 1}


async def test_a_quick_first_attempt_is_recorded_whole_by_its_end(
    factory: Any, sessions: Any, arq_redis: Any, run_burst: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL a quick step's start is not written apart: its end writes it (a statement
    fewer per step), so while the handler runs the row still says queued. What is recorded
    afterwards is whole: the attempt, the start time, step.running before the end."""
    # Quick whatever the machine's load: a handler past the grace has its start written at once.
    monkeypatch.setattr(runner, "SLOW_WORK_SECONDS", 60)
    submission = await _at_store(factory, arq_redis, run_burst)
    seen_while_running: list[str] = []

    async def looks_at_its_row(ctx: StepContext) -> Outcome:
        seen_while_running.append((await step_row(sessions, submission.id, "store")).state)
        return Outcome(result={"stored": True})

    await run_burst("store", looks_at_its_row)

    assert seen_while_running == ["queued" if postgres_engine(sessions) is not None else "running"]
    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts) == ("succeeded", 1)
    trail = [
        event
        for event in await events(sessions, keys.submission_topic(submission.id))
        if event.data.get("step") == "store"
    ]
    assert [event.type for event in trail] == ["step.queued", "step.running", "step.succeeded"]
    _, running, succeeded = trail
    assert running.data == {"step": "store", "attempt": 1}
    assert row.started_at is not None and row.finished_at is not None
    assert row.started_at <= running.at <= succeeded.at and row.started_at <= row.finished_at
    assert running.seq < succeeded.seq


async def test_a_retried_attempt_is_shown_running_from_its_start(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    """Only a job's first delivery leaves its start to its end: a retry is recorded running, as
    its attempt, before its handler runs."""
    quick_retries(settings, "store")
    submission = await _at_store(factory, arq_redis, run_burst)
    seen_while_running: list[tuple[str, int]] = []

    async def unavailable_once(ctx: StepContext) -> Outcome:
        if ctx.attempt == 1:
            raise TransientStepError("upstream said 503")
        row = await step_row(sessions, submission.id, "store")
        seen_while_running.append((row.state, row.attempts))
        return Outcome()

    await run_burst("store", unavailable_once)

    assert seen_while_running == [("running", 2)]
    assert await step_events(sessions, submission.id, "store") == RETRIED_ONCE
    running = await events(sessions, keys.submission_topic(submission.id), "step.running")
    assert [event.data["attempt"] for event in running if event.data["step"] == "store"] == [1, 2]


async def test_a_step_that_already_succeeded_is_a_no_op_when_delivered_again(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    submission = await _at_store(factory, arq_redis, run_burst)
    calls: list[int] = []

    async def counts_calls(ctx: StepContext) -> Outcome:
        calls.append(ctx.attempt)
        return Outcome(result={"done": True})

    await run_burst("store", counts_calls)
    for _ in range(2):
        await enqueue_step(arq_redis, "store", submission.id)
        await run_burst("store", counts_calls)

    assert calls == [1]
    succeeded = [e for e in await events(sessions, f"submission.{submission.id}", "step.succeeded")]
    assert [e.data["step"] for e in succeeded] == ["store"]
    assert (await step_row(sessions, submission.id, "store")).attempts == 1


async def test_transient_failures_retry_with_the_task_delay_then_fail_with_the_reason(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    quick_retries(settings, "store", max_tries=3, kind="exponential", delay_seconds=0.2, max_delay_seconds=5)
    submission = await _at_store(factory, arq_redis, run_burst)

    async def always_unavailable(ctx: StepContext) -> Outcome:
        raise TransientStepError("upstream said 503")

    await run_burst("store", always_unavailable)

    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts) == ("failed", 3)
    assert row.error == "upstream said 503 (gave up after 3 attempts)"
    retrying = await events(sessions, f"submission.{submission.id}", "step.retrying")
    assert [e.data["retry_in_seconds"] for e in retrying] == [0.2, 0.4]  # exponential
    states = await step_states(sessions, submission.id)
    assert {name: states[name] for name in FAN_OUT} == dict.fromkeys(FAN_OUT, "skipped")
    assert (await submission_row(sessions, submission.id)).status == "needs_attention"


async def test_an_unexpected_exception_counts_as_transient(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    quick_retries(settings, "store")
    submission = await _at_store(factory, arq_redis, run_burst)

    async def crashes_once(ctx: StepContext) -> Outcome:
        if ctx.attempt == 1:
            raise KeyError("surprise")
        return Outcome()

    await run_burst("store", crashes_once)

    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts) == ("succeeded", 2)


async def test_each_job_is_one_log_line_with_its_fields_and_a_retry_is_still_logged(
    factory: Any, settings: Settings, arq_redis: Any, run_burst: Any, caplog: Any
) -> None:
    """A worker logs a job once, when its step ends, with fields to search by; arq's own start and
    success lines (free text, two a job) are left out, its retry line is kept."""
    quick_retries(settings, "store")
    submission = await _at_store(factory, arq_redis, run_burst)
    quiet_arq_routine_lines()
    caplog.set_level(logging.INFO)

    async def unavailable_once(ctx: StepContext) -> Outcome:
        if ctx.attempt == 1:
            raise TransientStepError("upstream said 503")
        return Outcome()

    await run_burst("store", unavailable_once)

    ran = [record for record in caplog.records if record.getMessage() == "step ran"]
    assert [(r.task, r.submission_id, r.outcome, r.job_try) for r in ran] == [("store", submission.id, "succeeded", 2)]
    assert ran[0].seconds >= 0
    arq_lines = [record.getMessage() for record in caplog.records if record.name == "arq.worker"]
    assert any("↻" in line and "retrying" in line for line in arq_lines), arq_lines
    assert not [line for line in arq_lines if "→" in line or "←" in line]


async def test_a_permanent_failure_is_not_retried(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    quick_retries(settings, "store")
    submission = await _at_store(factory, arq_redis, run_burst)

    async def refuses(ctx: StepContext) -> Outcome:
        raise PermanentStepError("admin system answered 422: unknown course")

    await run_burst("store", refuses)

    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts, row.error) == ("failed", 1, "admin system answered 422: unknown course")
    assert await step_events(sessions, submission.id, "store") == ["step.queued", "step.running", "step.failed"]


async def test_a_second_delivery_while_the_first_is_within_its_time_limit_is_put_back(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    quick_retries(settings, "store", timeout_seconds=60)
    submission = await _at_store(factory, arq_redis, run_burst)
    await _set_store_row(sessions, submission.id, state="running", attempts=1, started_at=utcnow())
    calls: list[int] = []

    async def must_not_run(ctx: StepContext) -> Outcome:
        calls.append(ctx.attempt)
        return Outcome()

    await run_burst("store", must_not_run, max_burst_jobs=1)

    assert calls == []
    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts) == ("running", 1)
    assert await job_exists(arq_redis, "store", submission.id)  # deferred until the time limit


async def test_a_step_whose_worker_died_on_every_attempt_gives_up(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    """A file that takes the worker down each time (say, out of memory) must not loop for ever."""
    quick_retries(settings, "store", max_tries=3, timeout_seconds=5)
    submission = await _at_store(factory, arq_redis, run_burst)
    long_ago = utcnow() - timedelta(minutes=10)
    await _set_store_row(sessions, submission.id, state="running", attempts=3, started_at=long_ago)
    calls: list[int] = []

    async def must_not_run(ctx: StepContext) -> Outcome:
        calls.append(ctx.attempt)
        return Outcome()

    await run_burst("store", must_not_run)

    assert calls == []
    row = await step_row(sessions, submission.id, "store")
    assert row.state == "failed"
    assert row.error == "the worker stopped during each of 3 attempts (gave up)"
    assert (await submission_row(sessions, submission.id)).status == "needs_attention"


async def test_a_worker_shutting_down_mid_step_hands_the_step_back_at_once(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    """A scale-down cancels running jobs; the next delivery must not wait out the time limit."""
    quick_retries(settings, "store", timeout_seconds=60)
    submission = await _at_store(factory, arq_redis, run_burst)
    busy = asyncio.Event()

    async def blocks_on_first_attempt(ctx: StepContext) -> Outcome:
        if ctx.attempt == 1:
            busy.set()
            await asyncio.sleep(60)
        return Outcome(result={"attempt": ctx.attempt})

    worker = burst_worker("store", blocks_on_first_attempt, settings)
    running = asyncio.create_task(worker.main())
    try:
        await asyncio.wait_for(busy.wait(), 10)
        worker.handle_sig(signal.SIGTERM)  # what arq does on SIGTERM once its grace is over
        await asyncio.wait_for(running, 10)
    finally:
        await worker.close()

    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts, row.result) == ("succeeded", 2, {"attempt": 2})
    retrying = await events(sessions, f"submission.{submission.id}", "step.retrying")
    assert [e.data["error"] for e in retrying] == ["worker stopped mid-step"]


async def test_progress_is_recorded_in_order_and_published_to_the_page(
    factory: Any, sessions: Any, redis: Redis, arq_redis: Any, run_burst: Any
) -> None:
    submission = await _at_store(factory, arq_redis, run_burst)
    topic = keys.submission_topic(submission.id)
    page = await subscribed(redis, keys.events_channel(topic))

    async def reports_progress(ctx: StepContext) -> Outcome:
        await ctx.progress("reading the file", 0.5)
        await ctx.progress("nearly there", 1.7)  # a fraction past the end is shown as done
        return Outcome(result={})

    await run_burst("store", reports_progress)

    progress = await events(sessions, topic, "step.progress")
    assert [(event.data["message"], event.data["fraction"]) for event in progress] == [
        ("reading the file", 0.5),
        ("nearly there", 1.0),
    ]
    assert await step_events(sessions, submission.id, "store") == [
        "step.queued",
        "step.running",
        "step.progress",
        "step.progress",
        "step.succeeded",
    ]
    trail = await events(sessions, topic)
    assert [event.seq for event in trail] == list(range(1, len(trail) + 1))  # gapless, in order
    # What the open page receives from the subscription on: the same events, seqs and order.
    published: list[tuple[int, str]] = []
    while not published or published[-1][1] != "step.succeeded":
        message = await page.get_message(ignore_subscribe_messages=True, timeout=5)
        assert message is not None, f"published so far: {published}"
        envelope = json.loads(message["data"])
        if envelope["data"].get("step") == "store":
            published.append((envelope["seq"], envelope["type"]))
    recorded = [(event.seq, event.type) for event in trail if event.data.get("step") == "store"]
    assert recorded[0][1] == "step.queued" and recorded[1:] == published
    await page.aclose()


async def test_work_that_outlasts_its_grace_is_announced_and_quick_work_is_not(
    factory: Any, sessions: Any, redis: Redis, arq_redis: Any, run_burst: Any
) -> None:
    """progress_if_slow: a message once the work has taken its time, recorded before the step
    ends; work done sooner leaves no progress event (nothing the page could have shown)."""
    slow, quick = await _at_store(factory, arq_redis, run_burst), await _at_store(factory, arq_redis, run_burst)
    page = await subscribed(redis, keys.events_channel(keys.submission_topic(slow.id)))

    async def told() -> None:
        while True:
            message = await page.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None and json.loads(message["data"])["type"] == "step.progress":
                return

    async def works(ctx: StepContext) -> Outcome:
        if ctx.submission.id == slow.id:
            async with ctx.progress_if_slow("copying slowly", after=0.05):
                await asyncio.wait_for(told(), 10)  # the work lasts until the page was told
        else:
            async with ctx.progress_if_slow("copying quickly", after=60):
                pass
        return Outcome(result={})

    await run_burst("store", works)
    await page.aclose()

    assert await step_events(sessions, slow.id, "store") == [
        "step.queued",
        "step.running",
        "step.progress",
        "step.succeeded",
    ]
    [said] = await events(sessions, keys.submission_topic(slow.id), "step.progress")
    assert said.data["message"] == "copying slowly"
    assert await step_events(sessions, quick.id, "store") == ["step.queued", "step.running", "step.succeeded"]


async def test_a_step_still_running_after_its_grace_is_shown_running_while_it_runs(
    factory: Any, sessions: Any, redis: Redis, arq_redis: Any, run_burst: Any
) -> None:
    """A step's start waits to go out with its end only while the step is quick: one that takes
    longer is announced while it runs (the handler here works until the page has seen it)."""
    submission = await _at_store(factory, arq_redis, run_burst)
    page = await subscribed(redis, keys.events_channel(keys.submission_topic(submission.id)))
    seen: list[str] = []
    rows_while_running: list[tuple[str, int]] = []

    async def until_running_is_seen() -> None:
        while "step.running" not in seen:
            message = await page.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                seen.append(json.loads(message["data"])["type"])

    async def works(ctx: StepContext) -> Outcome:
        await asyncio.wait_for(until_running_is_seen(), 10)
        row = await step_row(sessions, submission.id, "store")
        rows_while_running.append((row.state, row.attempts))
        return Outcome(result={})

    await run_burst("store", works)
    async with asyncio.timeout(10):
        while "step.succeeded" not in seen:
            message = await page.get_message(ignore_subscribe_messages=True, timeout=5)
            if message is not None:
                seen.append(json.loads(message["data"])["type"])
    await page.aclose()
    assert seen == ["step.running", "step.succeeded"]
    assert await step_events(sessions, submission.id, "store") == ["step.queued", "step.running", "step.succeeded"]
    # Written while it ran, and counted once (the end does not write the start again).
    assert rows_while_running == [("running", 1)]
    assert (await step_row(sessions, submission.id, "store")).attempts == 1


async def test_a_steps_end_is_sent_with_its_jobs_finish_in_one_transaction(
    factory: Any, settings: Settings, arq_redis: Any, run_burst: Any
) -> None:
    """What ending a step publishes and queues goes out in the MULTI/EXEC that takes its job off
    the queue: one round trip fewer per job, and the steps it made ready are queued at the instant
    the job is done. Read from Redis's own MONITOR of what it executed."""
    submission = await _at_store(factory, arq_redis, run_burst)
    executed: list[str] = []
    watching, grew = asyncio.Event(), asyncio.Event()
    observer = Redis.from_url(settings.redis_url)

    async def watch() -> None:
        async with observer.monitor() as monitor:
            watching.set()
            async for command in monitor.listen():
                executed.append(command["command"])
                grew.set()

    watcher = asyncio.create_task(watch())
    await asyncio.wait_for(watching.wait(), 10)

    async def stores(ctx: StepContext) -> Outcome:
        return Outcome(result={"stored": True})

    await run_burst("store", stores)
    finished = f"ZREM {keys.queue_name('store')} {keys.job_id('store', submission.id)}"

    def transaction_finishing_the_job() -> list[str] | None:
        for end, command in enumerate(executed):
            if command == "EXEC":
                begin = max(at for at in range(end) if executed[at] == "MULTI")
                if finished in executed[begin:end]:
                    return executed[begin:end]
        return None

    async def finishing_transaction() -> list[str]:
        while True:
            grew.clear()
            if (block := transaction_finishing_the_job()) is not None:
                return block
            await grew.wait()

    block = await asyncio.wait_for(finishing_transaction(), 10)
    watcher.cancel()
    await observer.aclose()
    published = [command for command in block if command.startswith("PUBLISH")]
    # The quick step's start too, held back to go first in the same transaction.
    kinds = [kind for command in published for kind in ("step.running", "step.succeeded") if kind in command]
    assert kinds == ["step.running", "step.succeeded"], block
    queued = [
        step for step in FAN_OUT if any(keys.job_id(step, submission.id) in c for c in block if c.startswith("EVAL"))
    ]
    assert queued == list(FAN_OUT), block
