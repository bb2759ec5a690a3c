"""The reconciler rebuilds lost work from the step rows: Redis flushed, workers gone, jobs overrun.

The similarity, admin, receipt and thumbnail steps are run here by a stand-in
handler (`standin_finishes_step`) so these tests cover the pipeline's
plumbing, not those tasks.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import update

from core import keys
from core.clock import utcnow
from core.models import SubmissionStep
from core.pipeline import STEP_NAMES
from core.queues import enqueue_step, job_exists
from core.settings import Settings
from core.storage import Area, make_storage
from tests.fixtures.clamd import Clamd
from tests.fixtures.pipeline import events, quick_retries, step_row, step_states, submission_row
from tests.fixtures.workers import run_maintenance_burst
from workers import scan, store
from workers.maintenance import maintenance_worker_settings
from workers.reconcile import reconcile, reconcile_once
from workers.runner import Outcome, StepContext

FAN_OUT = ("similarity", "admin", "receipt", "thumbnail")


async def standin_finishes_step(ctx: StepContext) -> Outcome:
    return Outcome(result={"stand_in": True})


async def _set_step(sessions: Any, submission_id: int, step: str, **values: Any) -> None:
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == step)
            .values(**values)
        )


async def test_redis_flushed_mid_pipeline_loses_no_submission(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd, redis: Redis
) -> None:
    settings.scanner.clamd_host, settings.scanner.clamd_port = clamd.host, clamd.port
    world = await factory.world()
    submissions = [await factory.submission(world, f"essay number {n}\n".encode() * 40) for n in range(3)]
    for submission in submissions:
        await enqueue_step(arq_redis, "scan", submission.id)
    await run_burst("scan", scan.handle)

    await redis.flushdb()  # the store jobs are gone
    assert not any([await job_exists(arq_redis, "store", s.id) for s in submissions])
    report = await reconcile(sessions, arq_redis, settings, grace_seconds=0)
    assert sorted((r.submission_id, r.step) for r in report.requeued) == [(s.id, "store") for s in submissions]

    await run_burst("store", store.handle)
    await redis.flushdb()  # and again, with the four parallel steps queued
    report = await reconcile(sessions, arq_redis, settings, grace_seconds=0)
    assert len(report.requeued) == len(submissions) * len(FAN_OUT)
    for task in FAN_OUT:
        await run_burst(task, standin_finishes_step)

    for submission in submissions:
        assert (await submission_row(sessions, submission.id)).status == "complete"
        assert await step_states(sessions, submission.id) == dict.fromkeys(STEP_NAMES, "succeeded")
        topic = keys.submission_topic(submission.id)
        succeeded = sorted(e.data["step"] for e in await events(sessions, topic, "step.succeeded"))
        assert succeeded == sorted(STEP_NAMES)  # each step exactly once
        requeued = sorted(e.data["step"] for e in await events(sessions, topic, "reconciler.requeued"))
        assert requeued == sorted(["store", *FAN_OUT])
        assert len(await events(sessions, topic, "submission.complete")) == 1
    storage = make_storage(settings)
    assert all([await storage.exists(Area.store, s.storage_key) for s in submissions])
    # Nothing left to do.
    again = await reconcile(sessions, arq_redis, settings, grace_seconds=0)
    assert (again.requeued, again.finished) == ([], {})


async def test_live_jobs_and_fresh_transitions_are_left_alone(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, redis: Redis
) -> None:
    world = await factory.world()
    submission = await factory.submission(world, b"leave me be\n")
    await enqueue_step(arq_redis, "scan", submission.id)
    assert (await reconcile(sessions, arq_redis, settings, grace_seconds=0)).requeued == []

    await redis.flushdb()
    # Queued a moment ago: its job may be being enqueued right now.
    settings.worker.reconcile_grace_seconds = 10
    assert (await reconcile(sessions, arq_redis, settings)).requeued == []

    # Running within its time limit: its worker may still be at it (or its job is in progress).
    await _set_step(sessions, submission.id, "scan", state="running", attempts=1, started_at=utcnow())
    assert (await reconcile(sessions, arq_redis, settings, grace_seconds=0)).requeued == []
    assert not await job_exists(arq_redis, "scan", submission.id)
    assert await events(sessions, keys.submission_topic(submission.id), "reconciler.requeued") == []


async def test_a_step_running_past_its_time_limit_with_no_job_is_run_again(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    quick_retries(settings, "scan", timeout_seconds=1)
    world = await factory.world()
    submission = await factory.submission(world, b"my worker vanished\n")
    started = utcnow() - timedelta(seconds=5)
    await _set_step(sessions, submission.id, "scan", state="running", attempts=1, started_at=started)

    report = await reconcile(sessions, arq_redis, settings, grace_seconds=0)

    assert [(r.step, r.reason) for r in report.requeued] == [("scan", "running past its time limit, job missing")]
    await run_burst("scan", scan.handle)
    row = await step_row(sessions, submission.id, "scan")
    assert (row.state, row.attempts) == ("skipped", 2)  # no scanner configured here
    requeued = await events(sessions, keys.submission_topic(submission.id), "reconciler.requeued")
    assert [(e.data["step"], e.actor) for e in requeued] == [("scan", "reconciler")]


async def test_a_step_waiting_past_its_deadline_is_handed_back_to_its_handler(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    world = await factory.world()
    submission = await factory.submission(world, b"waiting on a provider\n")
    for step, state in (("scan", "succeeded"), ("store", "succeeded"), ("similarity", "running")):
        await _set_step(sessions, submission.id, step, state=state, attempts=1, started_at=utcnow())
    past = utcnow() - timedelta(seconds=1)
    await _set_step(sessions, submission.id, "similarity", wait_until=past, result={"provider_id": "abc"})
    seen: list[dict[str, Any]] = []

    async def standin_polls_provider(ctx: StepContext) -> Outcome:
        seen.append(ctx.previous_result)
        return Outcome(result={"score": 12})

    report = await reconcile(sessions, arq_redis, settings, grace_seconds=0)
    assert [(r.step, r.reason) for r in report.requeued] == [("similarity", "waiting past its deadline")]
    await run_burst("similarity", standin_polls_provider)

    assert seen == [{"provider_id": "abc"}]
    assert (await step_row(sessions, submission.id, "similarity")).state == "succeeded"


async def test_a_submission_whose_steps_all_ended_is_finished(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any
) -> None:
    world = await factory.world()
    submission = await factory.submission(world, b"finished but never marked\n")
    for step in STEP_NAMES:
        await _set_step(sessions, submission.id, step, state="failed" if step == "admin" else "succeeded")

    report = await reconcile(sessions, arq_redis, settings, grace_seconds=0)

    assert report.finished == {submission.id: "needs_attention"}
    row = await submission_row(sessions, submission.id)
    assert (row.status, row.completed_at is not None) == ("needs_attention", True)
    assert len(await events(sessions, keys.submission_topic(submission.id), "submission.needs_attention")) == 1


async def test_handin_reconcile_runs_one_pass_with_its_own_connections(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, redis: Redis
) -> None:
    world = await factory.world()
    submission = await factory.submission(world, b"queued, then Redis lost it\n")
    settings.worker.reconcile_grace_seconds = 0

    report = await reconcile_once(settings)

    assert [(r.submission_id, r.step) for r in report.requeued] == [(submission.id, "scan")]
    assert await job_exists(arq_redis, "scan", submission.id)
    assert "requeued 1" in report.summary()


async def test_the_maintenance_worker_runs_the_reconciler(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any
) -> None:
    world = await factory.world()
    submission = await factory.submission(world, b"nobody enqueued me\n")
    settings.worker.reconcile_grace_seconds = 0
    assert maintenance_worker_settings(settings).queue_name == keys.queue_name(keys.MAINTENANCE_TASK)
    worker = await run_maintenance_burst(settings)

    assert worker.jobs_complete >= 1
    assert await job_exists(arq_redis, "scan", submission.id)
    requeued = await events(sessions, keys.submission_topic(submission.id), "reconciler.requeued")
    assert [e.data["step"] for e in requeued] == ["scan"]
