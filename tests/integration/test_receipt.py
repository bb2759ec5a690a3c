"""The receipt step against a real SMTP server (aiosmtpd), real Redis and both databases."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.models import Assignment, Submission, SubmissionStep, User
from core.queues import enqueue_step
from core.settings import Settings
from tests.fixtures.conditions import subscribed
from tests.fixtures.factories import Factory
from tests.fixtures.pipeline import quick_retries, step_row
from tests.fixtures.smtp import ReceivedMail, SmtpServer
from workers import receipt

CONTENT = b"A short essay about receipts.\n" * 40


async def queued_receipt_step(factory: Factory, arq_redis: ArqRedis, *, late: bool = False) -> Submission:
    """A submission as the store step leaves it, with its receipt job on the queue."""
    world = await factory.world()
    return await factory.stored_submission(
        world, CONTENT, step=receipt.TASK, arq_redis=arq_redis, filename="my essay.txt", late=late
    )


async def receipt_row(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> SubmissionStep:
    return await step_row(sessions, submission_id, receipt.TASK)


def use_smtp(settings: Settings, server: SmtpServer) -> None:
    settings.smtp.host = server.host
    settings.smtp.port = server.port
    settings.smtp.timeout_seconds = 2
    quick_retries(settings, receipt.TASK, max_tries=10, delay_seconds=0.1)


async def test_receipt_tells_the_student_what_was_received(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, smtp_server: SmtpServer
) -> None:
    use_smtp(settings, smtp_server)
    submission = await queued_receipt_step(factory, arq_redis, late=True)

    await run_burst(receipt.TASK, receipt.handle)

    [mail] = smtp_server.received
    message = mail.message
    async with sessions() as session:
        student = await session.get(User, submission.user_id)
    assert student is not None and mail.rcpt_tos == [student.email]
    assert student.email in message["To"]
    assert message["Message-ID"] == f"<submission-{submission.id}.receipt@handin.local>"
    assert f"submission {submission.id}" in message["Subject"] and "(late)" in message["Subject"]
    body = message.get_body(("plain",)).get_content()
    assert f"Submission id:  {submission.id}" in body
    assert "Assignment:     Essay" in body
    assert "File name:      my essay.txt" in body
    assert f"{len(CONTENT):,} bytes" in body
    assert f"SHA-256:        {submission.sha256}" in body
    assert submission.received_at.strftime("%Y-%m-%d %H:%M:%S UTC") in body
    assert "LATE (after the deadline)" in body
    row = await receipt_row(sessions, submission.id)
    assert row.state == "succeeded"
    assert row.result["message_id"] == message["Message-ID"] and row.result["delivery"] == "smtp"


async def test_smtp_down_then_up_sends_exactly_one_receipt(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    smtp_server: SmtpServer,
    redis: Redis,
) -> None:
    use_smtp(settings, smtp_server)
    submission = await queued_receipt_step(factory, arq_redis)
    pubsub = await subscribed(redis, keys.events_channel(keys.submission_topic(submission.id)))
    smtp_server.stop()

    worker = asyncio.create_task(run_burst(receipt.TASK, receipt.handle))
    try:
        # Wait for the step to report the outage, then bring the mail server back.
        async with asyncio.timeout(10):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
                if message and json.loads(message["data"])["type"] == "step.retrying":
                    break
        row = await receipt_row(sessions, submission.id)
        assert row.state == "retrying" and "mail server unreachable" in (row.error or "")
        assert row.result["message_id"] == f"<submission-{submission.id}.receipt@handin.local>"  # the intent
        smtp_server.start()
        await asyncio.wait_for(worker, 20)
    finally:
        worker.cancel()
        await pubsub.aclose()

    [mail] = smtp_server.received
    assert mail.message["Message-ID"] == f"<submission-{submission.id}.receipt@handin.local>"
    row = await receipt_row(sessions, submission.id)
    assert row.state == "succeeded" and row.attempts >= 2


async def test_a_repeat_after_the_server_accepted_sends_nothing(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    smtp_server: SmtpServer,
) -> None:
    """A worker that dies after the 250 but before the step commits: the redelivered job must not resend."""
    use_smtp(settings, smtp_server)
    submission = await queued_receipt_step(factory, arq_redis)
    await run_burst(receipt.TASK, receipt.handle)
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission.id, SubmissionStep.step == receipt.TASK)
            .values(state="running", started_at=None)
        )
    await enqueue_step(arq_redis, receipt.TASK, submission.id)

    await run_burst(receipt.TASK, receipt.handle)

    assert len(smtp_server.received) == 1
    row = await receipt_row(sessions, submission.id)
    assert row.state == "succeeded" and row.result["already_accepted"] is True


async def test_without_smtp_the_receipt_goes_to_the_outbox_once(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    settings.smtp.host = None
    submission = await queued_receipt_step(factory, arq_redis)
    await run_burst(receipt.TASK, receipt.handle)
    # A redelivered job rewrites the same file rather than adding a second one.
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission.id, SubmissionStep.step == receipt.TASK)
            .values(state="queued")
        )
    await enqueue_step(arq_redis, receipt.TASK, submission.id)
    await run_burst(receipt.TASK, receipt.handle)

    files = list(settings.smtp.outbox_dir.iterdir())
    assert [path.name for path in files] == [f"submission-{submission.id}.receipt@handin.local.eml"]
    message = ReceivedMail("", [], files[0].read_bytes()).message
    assert message["Message-ID"] == f"<submission-{submission.id}.receipt@handin.local>"
    text = message.get_body(("plain",)).get_content()
    assert submission.sha256 in text and "on time" in text
    row = await receipt_row(sessions, submission.id)
    assert row.state == "succeeded" and row.result["delivery"] == "outbox"


async def test_a_title_and_name_with_line_breaks_still_get_a_safe_receipt(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, smtp_server: SmtpServer
) -> None:
    """Header injection in staff- or student-entered text: refused as headers, yet the receipt goes out."""
    use_smtp(settings, smtp_server)
    submission = await queued_receipt_step(factory, arq_redis)
    long_tail = " ".join(["über-long assignment title"] * 6)
    title = f"Essay\r\nBcc: evil@example\n{long_tail}"
    async with sessions() as session, session.begin():
        await session.execute(update(Assignment).where(Assignment.id == submission.assignment_id).values(title=title))
        await session.execute(
            update(User).where(User.id == submission.user_id).values(name="Ann\r\nBcc: other-evil@example")
        )

    await run_burst(receipt.TASK, receipt.handle)

    row = await receipt_row(sessions, submission.id)
    assert (row.state, row.attempts) == ("succeeded", 1), row.error
    [mail] = smtp_server.received
    async with sessions() as session:
        student = await session.get(User, submission.user_id)
    assert student is not None and mail.rcpt_tos == [student.email]  # nobody else got it
    message = mail.message
    assert message["Bcc"] is None
    subject = str(message["Subject"])
    assert "\r" not in subject and "\n" not in subject
    assert subject.startswith(f"Receipt: Essay Bcc: evil@example {long_tail}, ")
    assert f"submission {submission.id}" in subject
    assert "\n" not in str(message["To"]) and student.email in str(message["To"])
    # A long subject is folded on the wire, as RFC 5322 asks, not cut.
    head = mail.content.split(b"\r\n\r\n", 1)[0]
    assert all(len(line) <= 78 for line in head.split(b"\r\n")), head


async def test_the_receipt_links_back_to_the_submission_and_says_when_it_was_not_scanned(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, smtp_server: SmtpServer
) -> None:
    use_smtp(settings, smtp_server)
    settings.public_url = "https://handin.example.edu/"
    scanned = await queued_receipt_step(factory, arq_redis)
    unscanned = await queued_receipt_step(factory, arq_redis)
    async with sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == unscanned.id, SubmissionStep.step == "scan")
            .values(state="skipped", result={"verdict": "not scanned", "reason": "no scanner configured"})
        )

    await run_burst(receipt.TASK, receipt.handle)

    bodies = {mail.message["Message-ID"]: mail.message.get_body().get_content() for mail in smtp_server.received}
    for submission in (scanned, unscanned):
        body = bodies[f"<submission-{submission.id}.receipt@handin.local>"]
        assert any(
            line.endswith(f" https://handin.example.edu/submissions/{submission.id}") for line in body.splitlines()
        )
    unscanned_body = bodies[f"<submission-{unscanned.id}.receipt@handin.local>"]
    assert "NOT virus-scanned" in unscanned_body and "configured" not in unscanned_body
    assert "virus" not in bodies[f"<submission-{scanned.id}.receipt@handin.local>"]
