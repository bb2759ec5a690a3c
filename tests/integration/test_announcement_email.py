"""Announcements posted with ``email: true`` reach every enrolled student by mail, once, through the receipt
worker, against a real SMTP server (aiosmtpd) and real Redis; and announcements outlive the chat retention."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy import select, update

from core import chat, keys
from core.clock import utcnow
from core.db import transaction
from core.events import EventBatch
from core.models import Event
from core.settings import Settings
from tests.fixtures.app import World
from tests.fixtures.pipeline import quick_retries
from tests.fixtures.smtp import SmtpServer
from workers import receipt
from workers.maintenance import prune_chat_job


def use_smtp(settings: Settings, server: SmtpServer, **policy: Any) -> None:
    settings.smtp.host = server.host
    settings.smtp.port = server.port
    settings.smtp.timeout_seconds = 2
    quick_retries(settings, receipt.TASK, max_tries=10, delay_seconds=0.1, **policy)


async def run_receipt_worker(run_burst: Any, settings: Settings) -> None:
    await run_burst(receipt.TASK, receipt.handle, functions=receipt.functions(settings))


async def announce(as_user: Any, world: World, text: str, email: bool = True) -> int:
    staff = await as_user("staff")
    answer = await staff.post(f"/api/courses/{world.course_id}/announcements", json={"text": text, "email": email})
    assert answer.status_code == 201, answer.text
    assert answer.json()["emailed"] is email
    return int(answer.json()["seq"])


def students(world: World) -> list[str]:
    return sorted(World.email(who) for who in ("student", "student2"))


async def test_an_emailed_announcement_reaches_every_enrolled_student_once_even_if_the_job_runs_twice(
    world: World, as_user: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, smtp_server: SmtpServer
) -> None:
    use_smtp(settings, smtp_server)
    seq = await announce(as_user, world, "The exam moves to Friday, room B.")
    await run_receipt_worker(run_burst, settings)

    mails = smtp_server.received
    # The two students, not the staff member, the outsider or the other course's staff.
    assert sorted(rcpt for mail in mails for rcpt in mail.rcpt_tos) == students(world)
    for mail in mails:
        message = mail.message
        assert message["Subject"] == "Announcement: CS101 Systems"
        assert "The exam moves to Friday, room B." in message.get_content()
        assert f"/courses/{world.course_id}" in message.get_content()
    assert len({mail.message["Message-ID"] for mail in mails}) == 2

    # The same job again (a retry, a second queueing): nobody gets a second copy.
    await chat.queue_announcement_mail(arq_redis, world.course_id, seq)
    await run_receipt_worker(run_burst, settings)
    assert len(smtp_server.received) == 2


async def test_a_job_resumed_after_a_crash_mails_only_those_not_mailed_yet(
    world: World,
    as_user: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    redis: Redis,
    run_burst: Any,
    smtp_server: SmtpServer,
) -> None:
    use_smtp(settings, smtp_server)
    seq = await announce(as_user, world, "Bring a pencil.")
    # A worker that mailed the first student, then died.
    await redis.sadd(keys.announcement_mailed(world.course_id, seq), world.users["student"])
    await run_receipt_worker(run_burst, settings)
    assert [mail.rcpt_tos for mail in smtp_server.received] == [[World.email("student2")]]


async def test_a_large_course_is_mailed_in_parts_each_within_the_pools_time_limit(
    world: World, as_user: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, smtp_server: SmtpServer
) -> None:
    # A time limit so short that each part sends one mail and queues the next part.
    use_smtp(settings, smtp_server, timeout_seconds=0.0001)
    await announce(as_user, world, "Parts.")
    await run_receipt_worker(run_burst, settings)
    assert sorted(rcpt for mail in smtp_server.received for rcpt in mail.rcpt_tos) == students(world)


async def test_without_email_or_once_hidden_nothing_is_mailed(
    world: World, as_user: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, smtp_server: SmtpServer
) -> None:
    use_smtp(settings, smtp_server)
    await announce(as_user, world, "Only on the page.", email=False)
    seq = await announce(as_user, world, "Posted by mistake.")
    staff = await as_user("staff")
    answer = await staff.post(f"/api/courses/{world.course_id}/chat/{seq}/hide", json={"hidden": True})
    assert answer.status_code == 200, answer.text
    await run_receipt_worker(run_burst, settings)
    assert smtp_server.received == []


async def test_in_development_without_smtp_each_student_gets_one_file_in_the_outbox(
    world: World, as_user: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any, tmp_path: Path
) -> None:
    settings.smtp.host = None
    settings.smtp.outbox_dir = tmp_path / "outbox"
    seq = await announce(as_user, world, "Lab closed today.")
    await run_receipt_worker(run_burst, settings)
    await chat.queue_announcement_mail(arq_redis, world.course_id, seq)
    await run_receipt_worker(run_burst, settings)
    files = sorted(path.name for path in (tmp_path / "outbox").glob("*.eml"))
    assert len(files) == 2 and all(name.startswith(f"announcement-{world.course_id}-{seq}.") for name in files)


async def test_announcements_stay_pinned_past_the_chat_retention_and_a_hidden_one_stays_hidden(
    world: World, as_user: Any, settings: Settings, sessions: Any, arq_redis: ArqRedis
) -> None:
    topic = keys.course_topic(world.course_id)
    kept = await announce(as_user, world, "Exam on 12 June, hall A.", email=False)
    withdrawn = await announce(as_user, world, "Exam on 13 June (wrong).", email=False)
    staff, student = await as_user("staff"), await as_user("student")
    hidden = await staff.post(f"/api/courses/{world.course_id}/chat/{withdrawn}/hide", json={"hidden": True})
    assert hidden.status_code == 200, hidden.text
    assert (await student.get(f"/api/topics/{topic}/events")).status_code == 200
    async with transaction(sessions) as session:
        message = await EventBatch(session).emit(
            topic, chat.MESSAGE_TYPE, {"author_id": world.users["student"], "args": ["old chat"], "kwargs": {}}
        )
        # Everything happened long before the retention period.
        old = utcnow() - timedelta(days=settings.chat.retention_days + 1)
        await session.execute(update(Event).where(Event.topic == topic).values(at=old))

    # The old message and the old hide notice go; both announcements stay.
    assert await prune_chat_job({"settings": settings, "sessions": sessions}) == 2
    async with sessions() as session:
        left = {
            row.seq: row.type
            for row in await session.execute(select(Event.seq, Event.type).where(Event.topic == topic))
        }
    assert left == {kept: "announcement", withdrawn: "announcement"} and message.seq not in left

    page = (await student.get(f"/api/topics/{topic}/events")).json()["events"]
    assert [event["data"].get("text") for event in page] == ["Exam on 12 June, hall A.", None]
    assert "wrong" not in str(page)
    shown = {event["seq"]: event["data"] for event in (await staff.get(f"/api/topics/{topic}/events")).json()["events"]}
    assert shown[withdrawn]["hidden"] is True
