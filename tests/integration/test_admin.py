"""The admin step against a stand-in for the central admin system.

The admin system is a third party we cannot run here; tests/fixtures/admin_server.py
is a fake of it that speaks the real protocol (HTTP + JSON, signature checked,
dedupe by Idempotency-Key). Everything else is real: a burst arq worker on
Redis, PostgreSQL and SQLite.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.models import Submission, SubmissionStep
from core.settings import Settings
from tests.fixtures.admin_server import FakeAdminSystem
from tests.fixtures.factories import Factory
from tests.fixtures.pipeline import events, quick_retries, step_events, step_row
from tests.services import free_port
from workers import admin


async def queued_admin_step(factory: Factory, arq_redis: ArqRedis) -> Submission:
    """A submission as the store step leaves it, with its admin job on the queue."""
    world = await factory.world()
    return await factory.stored_submission(
        world, b"An essay on queues.\n", step=admin.TASK, arq_redis=arq_redis, filename="essay.txt"
    )


async def admin_row(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> SubmissionStep:
    return await step_row(sessions, submission_id, admin.TASK)


def use_admin(settings: Settings, system: FakeAdminSystem, timeout: float = 5.0) -> None:
    settings.admin.url = system.url
    settings.admin.secret = system.secret
    settings.admin.timeout_seconds = timeout
    quick_retries(settings, admin.TASK, max_tries=4)


async def test_posts_a_signed_record_once(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    admin_system: FakeAdminSystem,
) -> None:
    use_admin(settings, admin_system)
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    [request] = admin_system.requests
    assert request.signature_ok and request.status == 201
    assert request.headers["idempotency-key"] == f"submission-{submission.id}"
    record = json.loads(request.body)
    assert record["id"] == submission.id
    assert record["sha256"] == submission.sha256 and record["size"] == submission.size
    assert record["filename"] == "essay.txt" and record["late"] is False
    assert record["assignment_title"] == "Essay" and record["course_code"].startswith("C")
    assert record["student_email"].startswith("student") and record["received_at"].endswith("Z")
    row = await admin_row(sessions, submission.id)
    assert row.state == "succeeded"
    assert row.result["status"] == 201 and row.result["reference"] == "ADM-000001"


async def test_a_forged_signature_is_refused_by_the_receiver(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    admin_system: FakeAdminSystem,
) -> None:
    """A wrong shared secret is a configuration error: the step fails; staff see the receiver's words."""
    use_admin(settings, admin_system)
    settings.admin.secret = "not-the-shared-secret"
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    row = await admin_row(sessions, submission.id)
    assert row.state == "failed"
    assert row.error == admin.REFUSED.format(status=401)
    assert row.result["detail"] == "admin system answered 401: bad signature"
    assert admin_system.records == {}


async def test_503_twice_then_accepted_files_exactly_one_record(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    admin_system: FakeAdminSystem,
) -> None:
    use_admin(settings, admin_system)
    admin_system.fail_times = 2
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    assert [r.status for r in admin_system.requests] == [503, 503, 201]
    assert {r.headers["idempotency-key"] for r in admin_system.requests} == {f"submission-{submission.id}"}
    assert len({r.body for r in admin_system.requests}) == 1  # the same record each time
    assert len(admin_system.records) == 1
    row = await admin_row(sessions, submission.id)
    assert row.state == "succeeded" and row.attempts == 3
    types = await step_events(sessions, submission.id, admin.TASK)
    assert types.count("step.retrying") == 2 and types[-1] == "step.succeeded"


async def test_422_fails_the_step_with_the_reason(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    admin_system: FakeAdminSystem,
) -> None:
    use_admin(settings, admin_system)
    admin_system.refuse = (422, "unknown course code")
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    assert len(admin_system.requests) == 1  # refused for good: not retried
    row = await admin_row(sessions, submission.id)
    assert row.state == "failed" and row.attempts == 1
    assert row.error == admin.REFUSED.format(status=422)
    assert row.result["detail"] == "admin system answered 422: unknown course code"
    async with sessions() as session:
        refreshed = await session.get(Submission, submission.id)
    assert refreshed is not None and refreshed.status == "processing"  # other steps still to run


async def test_a_hanging_admin_system_is_retried_and_files_once(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    admin_system: FakeAdminSystem,
    caplog: pytest.LogCaptureFixture,
) -> None:
    use_admin(settings, admin_system, timeout=0.3)
    admin_system.hang_times = 1
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    row = await admin_row(sessions, submission.id)
    assert row.state == "succeeded" and row.attempts == 2
    [retried] = await events(sessions, keys.submission_topic(submission.id), "step.retrying")
    assert retried.data["error"] == admin.NOT_ACCEPTED_YET
    assert any(
        "admin system did not answer within 0.3 s" in r.getMessage() and r.__dict__["submission_id"] == submission.id
        for r in caplog.records
    )
    # The hung request finally gets through too: the receiver dedupes it by its key.
    admin_system.release.set()
    hung = admin_system.requests[0]
    assert await asyncio.to_thread(hung.answered.wait, 5)
    assert hung.status == 200
    assert len(admin_system.records) == 1


async def test_an_unreachable_admin_system_is_retried_then_given_up_with_the_reason_for_staff(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    """Nothing listens at the admin URL (the system is down): retried, then given up; the
    student reads that the submission itself is kept, staff read the connection error."""
    settings.admin.url = f"http://127.0.0.1:{free_port()}/api/submissions"
    settings.admin.secret = "admin-test-secret"
    quick_retries(settings, admin.TASK, max_tries=2)
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    row = await admin_row(sessions, submission.id)
    assert (row.state, row.attempts) == ("failed", 2)
    assert row.error == admin.GAVE_UP.format(attempts=2)
    assert row.result["detail"].startswith("admin system unreachable: ")
    [retried] = await events(sessions, keys.submission_topic(submission.id), "step.retrying")
    assert retried.data["error"] == admin.NOT_ACCEPTED_YET


async def test_no_admin_url_skips_with_a_reason(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    settings.admin.url = None
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    row = await admin_row(sessions, submission.id)
    assert row.state == "skipped"
    assert "no admin system configured" in row.result["reason"]


SECRET = "db=postgres://admin:hunter2@10.20.0.7/records"


async def test_a_500_with_internals_in_its_body_is_not_shown_to_the_student(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    admin_system: FakeAdminSystem,
    caplog: pytest.LogCaptureFixture,
) -> None:
    use_admin(settings, admin_system)
    admin_system.refuse = (500, f"internal error: could not connect to {SECRET}")
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    assert [r.status for r in admin_system.requests] == [500] * 4  # retried up to max_tries
    row = await admin_row(sessions, submission.id)
    assert row.state == "failed" and row.attempts == 4
    assert row.error == admin.GAVE_UP.format(attempts=4)
    retried = await events(sessions, keys.submission_topic(submission.id), "step.retrying")
    assert [event.data["error"] for event in retried] == [admin.NOT_ACCEPTED_YET] * 3
    [failed] = await events(sessions, keys.submission_topic(submission.id), "step.failed")
    assert failed.data["error"] == row.error
    for event in [*retried, failed]:
        assert SECRET not in event.data.get("error", "")
    # Staff (the step result's staff-only `detail`) and the log keep the admin system's words.
    assert SECRET in row.result["detail"] and failed.data["result"]["detail"] == row.result["detail"]
    assert sum(SECRET in r.getMessage() for r in caplog.records if r.name == "workers.admin") == 4


async def test_a_refusal_with_internals_in_its_body_is_not_shown_to_the_student(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    admin_system: FakeAdminSystem,
) -> None:
    use_admin(settings, admin_system)
    admin_system.refuse = (400, f"schema check failed against {SECRET}: " + "x" * 600)
    submission = await queued_admin_step(factory, arq_redis)

    await run_burst(admin.TASK, admin.handle)

    row = await admin_row(sessions, submission.id)
    assert (row.state, row.attempts) == ("failed", 1)
    assert row.error == "the central admin system refused the submission record (HTTP 400); staff can see its reason"
    [failed] = await events(sessions, keys.submission_topic(submission.id), "step.failed")
    assert SECRET not in failed.data["error"]
    assert row.result["detail"].startswith(f"admin system answered 400: schema check failed against {SECRET}")
    assert len(row.result["detail"]) <= len("admin system answered 400: ") + admin.MAX_REASON_CHARS


async def test_a_stopping_worker_closes_its_connection_to_the_admin_system(
    factory: Factory, settings: Settings, arq_redis: ArqRedis, run_burst: Any, admin_system: FakeAdminSystem
) -> None:
    """The kept-alive client is the worker process's; a worker that stops (scale-down, rollout) closes it."""
    use_admin(settings, admin_system)
    await queued_admin_step(factory, arq_redis)
    client = admin.http_client()  # the one this process's jobs use on this event loop

    await run_burst(admin.TASK, admin.handle)

    assert len(admin_system.requests) == 1
    assert client.closed
