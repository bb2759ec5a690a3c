"""The similarity step with an external, Turnitin-style provider.

The provider's cloud is a third party we cannot run, so tests/fixtures/similarity_provider.py
stands in for it: a real HTTP server speaking the same flow (create, upload,
request report, report by polling or by a signed webhook), slow and failing
at times. Everything else is real: the api app served by uvicorn receiving
the webhook, an arq worker running on Redis, SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import httpx
import pytest
from arq.connections import ArqRedis
from arq.worker import Worker
from redis.asyncio import Redis
from sqlalchemy import update

from api.main import create_app
from core import keys
from core.clock import utcnow
from core.models import Submission, SubmissionStep
from core.queues import enqueue_step
from core.settings import Settings
from core.similarity import external
from core.similarity.external import EVENT_TYPE_HEADER, SIGNATURE_HEADER, sign
from tests.fixtures.conditions import subscribed
from tests.fixtures.factories import Factory
from tests.fixtures.pipeline import events, quick_retries, step_events, step_row
from tests.fixtures.similarity_provider import API_KEY, WEBHOOK_SECRET, FakeProvider, serve
from tests.fixtures.workers import burst_worker
from tests.integration.test_similarity_builtin import essay, queued_similarity_step
from workers import similarity

CONTENT = essay(30, 4000).encode()
WAIT_LIMIT = 20.0


def use_provider(
    settings: Settings, provider: FakeProvider, *, poll_interval: float = 0.1, max_polls: int = 20
) -> None:
    section = settings.similarity
    section.provider = "external"
    section.external_url = provider.url
    section.external_api_key = API_KEY
    section.webhook_secret = WEBHOOK_SECRET
    section.poll_interval_seconds = poll_interval
    section.max_polls = max_polls
    quick_retries(settings, similarity.STEP, max_tries=4)


@contextlib.asynccontextmanager
async def similarity_worker(settings: Settings) -> AsyncIterator[Worker]:
    """A similarity worker running in the background, as a pool replica would."""
    worker = burst_worker(
        similarity.STEP,
        similarity.handle,
        settings,
        burst=False,
        poll_delay=0.02,
        functions=similarity.functions(settings),
    )
    task = asyncio.create_task(worker.main())
    worker.main_task = task
    try:
        yield worker
    finally:
        # Stop taking jobs, let the running ones end, then stop the loop and close.
        # A loop turn already starting jobs finishes first: cancelling it mid-way
        # would leave its Redis pipeline's connection checked out.
        worker.allow_pick_jobs = False
        await asyncio.sleep(0.2)
        while running := [job for job in worker.tasks.values() if not job.done()]:
            await asyncio.gather(*running, return_exceptions=True)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await worker.close()


@contextlib.asynccontextmanager
async def watching(redis: Redis, sessions: Any, submission_id: int) -> AsyncIterator[Any]:
    """``await seen("step.succeeded")``: the next such event on the submission's channel.

    Redis pub/sub channels are shared by every database number (and so by other
    test runs on this Redis): an envelope counts only if our audit trail has it.
    """
    topic = keys.submission_topic(submission_id)
    pubsub = await subscribed(redis, keys.events_channel(topic))

    async def ours(envelope: dict[str, Any]) -> bool:
        rows = await events(sessions, topic, envelope["type"])
        return any(row.seq == envelope["seq"] and row.data == envelope["data"] for row in rows)

    async def seen(event_type: str, step: str = similarity.STEP) -> dict[str, Any]:
        async with asyncio.timeout(WAIT_LIMIT):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                envelope: dict[str, Any] = json.loads(message["data"])
                if envelope["type"] == event_type and envelope["data"].get("step") == step and await ours(envelope):
                    return envelope

    try:
        yield seen
    finally:
        await pubsub.aclose()


async def drained(worker: Worker, arq_redis: ArqRedis) -> None:
    """Until the similarity queue is empty and the worker runs nothing (Redis offers no event for it)."""
    for _ in range(int(WAIT_LIMIT / 0.02)):
        busy = any(not task.done() for task in worker.tasks.values())
        if not busy and not await arq_redis.zcard(keys.queue_name(similarity.STEP)):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the similarity worker did not go idle")


async def submitted(factory: Factory, arq_redis: ArqRedis) -> Submission:
    world = await factory.world()
    return await queued_similarity_step(factory, arq_redis, world, CONTENT)


async def test_the_report_arrives_by_signed_webhook_at_the_api(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    provider = similarity_provider
    # Slow, fails the first create, and finishes the report on its own time (no polls due meanwhile).
    provider.delay_seconds, provider.fail_creates = 0.05, 1
    provider.report_polls, provider.report_seconds = None, 0.3
    use_provider(settings, provider, poll_interval=60)
    async with serve(create_app(settings)) as api_url:
        provider.webhook_url = f"{api_url}/api/webhooks/similarity"
        submission = await submitted(factory, arq_redis)
        async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
            envelope = await seen("step.succeeded")

    row = await step_row(sessions, submission.id, similarity.STEP)
    assert row.state == "succeeded"
    assert row.result["score"] == provider.score == envelope["data"]["result"]["score"]
    [provider_submission] = provider.submissions.values()  # the 503 did not lead to a second submission
    assert provider.create_attempts == 2
    assert row.result["provider_submission_id"] == provider_submission.id
    assert provider_submission.content == CONTENT
    assert provider_submission.title == "essay.txt"
    assert provider.webhook_answers == [200]
    assert await step_events(sessions, submission.id, similarity.STEP) == [
        "step.running",
        "step.retrying",
        "step.running",
        "step.waiting",
        "step.succeeded",
    ]
    [done] = await events(sessions, keys.submission_topic(submission.id), "step.succeeded")
    assert done.actor == "webhook:similarity"


async def test_a_forged_webhook_is_refused_and_changes_nothing(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    provider = similarity_provider
    provider.report_polls = None  # the report never completes by itself
    use_provider(settings, provider, poll_interval=60)
    submission = await submitted(factory, arq_redis)
    async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
        await seen("step.waiting")
    waiting = await step_row(sessions, submission.id, similarity.STEP)
    provider_id = waiting.result["provider_submission_id"]
    before = await events(sessions, keys.submission_topic(submission.id))
    body = json.dumps({"submission_id": provider_id, "status": "COMPLETE", "overall_match_percentage": 0}).encode()
    headers = {"Content-Type": "application/json", EVENT_TYPE_HEADER: "SIMILARITY_COMPLETE"}

    async with serve(create_app(settings)) as api_url, httpx.AsyncClient(base_url=api_url) as http:
        url = "/api/webhooks/similarity"
        forged = await http.post(url, content=body, headers={**headers, SIGNATURE_HEADER: sign("guess", body)})
        unsigned = await http.post(url, content=body, headers=headers)
        tampered_body = body.replace(b"0}", b"99}")
        genuine = {**headers, SIGNATURE_HEADER: sign(WEBHOOK_SECRET, body)}
        tampered = await http.post(url, content=tampered_body, headers=genuine)
        assert [forged.status_code, unsigned.status_code, tampered.status_code] == [401, 401, 401]
        row = await step_row(sessions, submission.id, similarity.STEP)
        assert (row.state, row.result) == ("running", waiting.result)
        assert len(await events(sessions, keys.submission_topic(submission.id))) == len(before)

        # The genuine one is recorded, once, however often it is delivered.
        first = await http.post(url, content=body, headers=genuine)
        again = await http.post(url, content=body, headers=genuine)
        assert (first.status_code, first.json()["status"]) == (200, "recorded")
        assert (again.status_code, again.json()["status"]) == (200, "already recorded")
        unknown = json.dumps({"submission_id": "nope", "status": "COMPLETE", "overall_match_percentage": 1}).encode()
        signed = {**headers, SIGNATURE_HEADER: sign(WEBHOOK_SECRET, unknown)}
        missing = await http.post(url, content=unknown, headers=signed)
        assert missing.status_code == 404
    row = await step_row(sessions, submission.id, similarity.STEP)
    assert (row.state, row.result["score"]) == ("succeeded", 0.0)
    assert len(await events(sessions, keys.submission_topic(submission.id), "step.succeeded")) == 1


async def test_without_a_webhook_deferred_polls_complete_it_and_the_worker_is_freed_at_once(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    provider = similarity_provider
    provider.delay_seconds, provider.report_polls = 0.05, 3  # the report takes three looks
    use_provider(settings, provider, poll_interval=0.3)
    submission = await submitted(factory, arq_redis)
    async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
        started = time.monotonic()
        await seen("step.waiting")
        freed_after = time.monotonic() - started
        [provider_submission] = provider.submissions.values()
        assert provider_submission.report_status != "COMPLETE"  # the step let go before the report was done
        row = await step_row(sessions, submission.id, similarity.STEP)
        assert row.state == "running" and row.wait_until is not None
        assert row.result["provider_submission_id"] == provider_submission.id
        envelope = await seen("step.succeeded")
    assert freed_after < 2.0
    assert envelope["data"]["result"] == {
        "provider": "external",
        "provider_submission_id": provider_submission.id,
        "score": provider.score,
    }
    assert provider_submission.report_polls == 3
    [done] = await events(sessions, keys.submission_topic(submission.id), "step.succeeded")
    assert done.actor == "worker:similarity-poll"


async def test_the_row_says_running_before_the_provider_knows_the_submission(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The provider's webhook and our polls act on the step's row once the provider knows the
    submission: from then on it must say running (a webhook is refused for a retry, a poll waits),
    also on a first attempt whose start would otherwise be written with its end."""
    use_provider(settings, similarity_provider, poll_interval=60)
    submission = await submitted(factory, arq_redis)
    states_when_saved: list[str] = []
    save_result = similarity.save_result

    async def noting_the_state(sessions: Any, submission_id: int, result: dict[str, Any]) -> None:
        states_when_saved.append((await step_row(sessions, submission_id, similarity.STEP)).state)
        await save_result(sessions, submission_id, result)

    monkeypatch.setattr(similarity, "save_result", noting_the_state)
    async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
        await seen("step.waiting")

    assert states_when_saved and set(states_when_saved) == {"running"}, states_when_saved
    assert await step_events(sessions, submission.id, similarity.STEP) == ["step.running", "step.waiting"]


async def test_a_webhook_racing_a_poll_is_recorded_once(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    provider = similarity_provider
    # The first poll completes the report, which fires the webhook at the same moment.
    provider.report_polls = 1
    use_provider(settings, provider, poll_interval=0.05)
    async with serve(create_app(settings)) as api_url:
        provider.webhook_url = f"{api_url}/api/webhooks/similarity"
        submissions = [await submitted(factory, arq_redis) for _ in range(3)]
        async with similarity_worker(settings) as worker:
            async with asyncio.timeout(WAIT_LIMIT):
                while len(provider.webhook_answers) < len(submissions):
                    await provider.webhook_sent.wait()
                    provider.webhook_sent.clear()
                # Count only once every poll that lost the race has finished too.
                await drained(worker, arq_redis)
    assert provider.webhook_answers == [200] * len(submissions)
    for submission in submissions:
        row = await step_row(sessions, submission.id, similarity.STEP)
        assert row.state == "succeeded"
        assert len(await events(sessions, keys.submission_topic(submission.id), "step.succeeded")) == 1


async def test_a_rerun_after_the_wait_reuses_the_provider_submission(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    provider = similarity_provider
    provider.report_polls = None
    use_provider(settings, provider, poll_interval=60)
    submission = await submitted(factory, arq_redis)
    async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
        await seen("step.waiting")
        # Redis lost the poll chain and the wait ran out: the reconciler queues the step again.
        await redis.flushdb()
        async with sessions() as session, session.begin():
            await session.execute(
                update(SubmissionStep)
                .where(SubmissionStep.submission_id == submission.id, SubmissionStep.step == similarity.STEP)
                .values(wait_until=utcnow() - timedelta(seconds=1))
            )
        await enqueue_step(arq_redis, similarity.STEP, submission.id)
        await seen("step.waiting")
        [provider_submission] = provider.submissions.values()
        await provider.complete_report(provider_submission)
        assert (await step_row(sessions, submission.id, similarity.STEP)).attempts == 2
        # Poll 1 is deferred by a minute; bring the next one forward.
        settings.similarity.poll_interval_seconds = 0.05
        await similarity.schedule_poll(arq_redis, settings, submission.id, 2)
        await seen("step.succeeded")
    assert provider.create_attempts == 1
    assert len(provider.submissions) == 1
    row = await step_row(sessions, submission.id, similarity.STEP)
    assert row.result["provider_submission_id"] == provider_submission.id


async def test_a_report_that_never_comes_fails_after_the_last_poll(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    provider = similarity_provider
    provider.report_polls = None
    use_provider(settings, provider, poll_interval=0.05, max_polls=3)
    submission = await submitted(factory, arq_redis)
    async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
        envelope = await seen("step.failed")
    assert "no similarity report from the provider after 3 polls" in envelope["data"]["error"]
    row = await step_row(sessions, submission.id, similarity.STEP)
    assert row.state == "failed"


@pytest.mark.parametrize("refusal", ["bad request", "bad key"])
async def test_a_refusal_fails_the_step_with_the_reason_and_no_retry(
    refusal: str,
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    provider = similarity_provider
    use_provider(settings, provider)
    if refusal == "bad request":
        provider.refuse_creates = True
    else:
        settings.similarity.external_api_key = "wrong"
    submission = await submitted(factory, arq_redis)
    async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
        envelope = await seen("step.failed")
    error = envelope["data"]["error"]
    assert "provider refused POST /submissions" in error
    assert ("400" in error and "not licensed" in error) if refusal == "bad request" else "401" in error
    assert await step_events(sessions, submission.id, similarity.STEP) == ["step.running", "step.failed"]
    assert provider.submissions == {}


async def test_a_webhook_before_the_step_let_go_is_refused_for_a_retry(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    """A fast provider's report may beat our worker's own "waiting" record: it must not be overwritten."""
    use_provider(settings, similarity_provider)
    submission = await submitted(factory, arq_redis)
    where = (SubmissionStep.submission_id == submission.id, SubmissionStep.step == similarity.STEP)
    handing_over = {"provider": "external", "provider_submission_id": "p-1", "uploaded": True}
    async with sessions() as session, session.begin():
        await session.execute(update(SubmissionStep).where(*where).values(state="running", result=handing_over))
    body = json.dumps({"submission_id": "p-1", "status": "COMPLETE", "overall_match_percentage": 12}).encode()
    headers = {SIGNATURE_HEADER: sign(WEBHOOK_SECRET, body), EVENT_TYPE_HEADER: "SIMILARITY_COMPLETE"}

    async with serve(create_app(settings)) as api_url, httpx.AsyncClient(base_url=api_url) as http:
        early = await http.post("/api/webhooks/similarity", content=body, headers=headers)
        assert early.status_code == 409
        assert (await step_row(sessions, submission.id, similarity.STEP)).result == handing_over
        async with sessions() as session, session.begin():
            await session.execute(
                update(SubmissionStep).where(*where).values(wait_until=utcnow() + timedelta(minutes=5))
            )
        retried = await http.post("/api/webhooks/similarity", content=body, headers=headers)
    assert (retried.status_code, retried.json()["status"]) == (200, "recorded")
    row = await step_row(sessions, submission.id, similarity.STEP)
    assert (row.state, row.result["score"]) == ("succeeded", 12.0)


async def test_a_stopping_worker_closes_its_connections_to_the_provider(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    similarity_provider: FakeProvider,
) -> None:
    """The provider client kept alive across checks is closed when the worker stops (scale-down, rollout)."""
    use_provider(settings, similarity_provider, poll_interval=60)
    submission = await submitted(factory, arq_redis)
    async with watching(redis, sessions, submission.id) as seen, similarity_worker(settings):
        await seen("step.waiting")  # submitted to the provider through the worker's kept-alive client
        [client] = external._CLIENTS[asyncio.get_running_loop()].values()
        assert not client.is_closed
    assert client.is_closed
    assert asyncio.get_running_loop() not in external._CLIENTS
