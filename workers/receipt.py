"""The `receipt` step: email the student proof of what we received.

The receipt carries the submission id, assignment, course, file name, size,
SHA-256, the time received and whether it was late, so a student can later
show exactly which file was handed in and when.

Sending at most once per submission
-----------------------------------
SMTP has no idempotency key, so the step keeps its own record:

1. The Message-ID is stable, ``<submission-<id>.receipt@<sender domain>>``:
   every attempt sends the very same message.
2. Before sending, the intent (that Message-ID) is written to the step's row.
3. After the server accepted the message (250 to DATA), ``keys.receipt_sent``
   is set in Redis; an attempt that finds it sends nothing.

The crash window: a worker that dies after the server's 250 but before the
Redis SET leaves no mark, and the retry sends again. That window is the length
of one Redis round trip; the duplicate it can cause carries the same
Message-ID, which mail stores and clients use to fold duplicates. Setting the
mark *before* sending would close that window but open a worse one: a crash
between the SET and the send would lose the receipt for good. A receipt that
may rarely arrive twice (as the same message) beats one that may never arrive.

Without an SMTP host the receipt is written to ``smtp.outbox_dir`` as
``<Message-ID>.eml`` (temp file, then rename), so a retry overwrites the one
file instead of adding a second.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from email.message import EmailMessage
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
from sqlalchemy import select

from core import keys
from core.clock import utcnow
from core.models import SubmissionStep
from core.settings import SmtpSettings
from workers.admin import SubmissionRecord, load_record
from workers.base import step_worker_settings
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError

log = logging.getLogger(__name__)

TASK = "receipt"
# The mark only has to outlive the gap between the send and the step's commit.
SENT_MARK_TTL_SECONDS = 14 * 24 * 3600
# 535 (bad credentials) is a configuration fault an operator can fix while we retry.
RETRYABLE_PERMANENT_CODES = frozenset({535})


def message_id(submission_id: int, sender: str) -> str:
    domain = parseaddr(sender)[1].rpartition("@")[2] or "handin.local"
    return f"<submission-{submission_id}.receipt@{domain}>"


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{size:,} bytes" if unit == "bytes" else f"{value:.1f} {unit} ({size:,} bytes)"
        value /= 1024
    raise AssertionError("unreachable")


def receipt_text(record: SubmissionRecord) -> str:
    received = record.received_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    timing = "LATE (after the deadline)" if record.late else "on time"
    return "\n".join(
        [
            f"Hello {record.student_name},",
            "",
            f"we received your submission to {record.assignment_title} ({record.course_code}).",
            "",
            f"  Submission id:  {record.id}",
            f"  Assignment:     {record.assignment_title}",
            f"  Course:         {record.course_code} {record.course_title}",
            f"  Attempt:        {record.attempt}",
            f"  File name:      {record.filename}",
            f"  Size:           {human_size(record.size)}",
            f"  SHA-256:        {record.sha256}",
            f"  Received:       {received}",
            f"  Submitted:      {timing}",
            "",
            "Keep this email: the SHA-256 identifies exactly the file you handed in.",
            "",
        ]
    )


def build_receipt(record: SubmissionRecord, section: SmtpSettings) -> EmailMessage:
    message = EmailMessage()
    message["From"] = section.sender
    message["To"] = formataddr((record.student_name, record.student_email))
    late = " (late)" if record.late else ""
    message["Subject"] = f"Receipt: {record.assignment_title}, {record.course_code} — submission {record.id}{late}"
    message["Date"] = format_datetime(utcnow())
    message["Message-ID"] = message_id(record.id, section.sender)
    # RFC 3834: no auto-replies (vacation notices) back to us.
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(receipt_text(record))
    return message


def outbox_path(section: SmtpSettings, mid: str) -> Path:
    return Path(section.outbox_dir) / f"{mid.strip('<>')}.eml"


def _write_atomically(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


async def record_intent(ctx: StepContext, mid: str) -> None:
    """Note on the step's row that this attempt is about to send `mid`."""
    async with ctx.sessions() as session, session.begin():
        row = await session.scalar(
            select(SubmissionStep).where(
                SubmissionStep.submission_id == ctx.submission.id, SubmissionStep.step == TASK
            )
        )
        if row is not None:
            row.result = {"message_id": mid, "sending_since": utcnow().isoformat(), "attempt": ctx.attempt}


async def send(message: EmailMessage, section: SmtpSettings) -> str:
    """Hand the message to the mail server; returns its acceptance line."""
    options: dict[str, Any] = {
        "hostname": section.host,
        "port": section.port,
        "start_tls": section.starttls,
        "timeout": section.timeout_seconds,
    }
    if section.username:
        options.update(username=section.username, password=section.password or "")
    try:
        _, response = await aiosmtplib.send(message, **options)
    except aiosmtplib.SMTPRecipientsRefused as error:
        codes = [refusal.code for refusal in error.recipients]
        if codes and all(code >= 500 for code in codes):
            raise PermanentStepError(f"mail server refused the recipient: {error.recipients[0].message}") from error
        raise TransientStepError(f"mail server deferred the recipient: {error}") from error
    except aiosmtplib.SMTPResponseException as error:
        if error.code >= 500 and error.code not in RETRYABLE_PERMANENT_CODES:
            raise PermanentStepError(f"mail server refused the receipt: {error.code} {error.message}") from error
        raise TransientStepError(f"mail server answered {error.code} {error.message}") from error
    except (aiosmtplib.SMTPException, OSError, TimeoutError) as error:
        raise TransientStepError(f"mail server unreachable: {error or type(error).__name__}") from error
    return str(response)


async def handle(ctx: StepContext) -> Outcome:
    section = ctx.settings.smtp
    record = await load_record(ctx.sessions, ctx.submission.id)
    message = build_receipt(record, section)
    mid = str(message["Message-ID"])
    result: dict[str, Any] = {"message_id": mid, "to": record.student_email}

    if not section.host:
        path = outbox_path(section, mid)
        await asyncio.to_thread(_write_atomically, path, message.as_bytes())
        return Outcome("succeeded", {**result, "delivery": "outbox", "file": path.name})

    sent_mark = keys.receipt_sent(record.id)
    if await ctx.redis.exists(sent_mark):
        # An earlier attempt got the 250 but died before the step was recorded.
        return Outcome("succeeded", {**result, "delivery": "smtp", "already_accepted": True})
    if ctx.previous_result.get("message_id"):
        log.info("resending a receipt an earlier attempt did not confirm", extra={"submission_id": record.id})
    await record_intent(ctx, mid)
    await ctx.progress("sending the receipt email")
    response = await send(message, section)
    await ctx.redis.set(sent_mark, utcnow().isoformat(), ex=SENT_MARK_TTL_SECONDS)
    return Outcome("succeeded", {**result, "delivery": "smtp", "server_response": response})


WorkerSettings = step_worker_settings(TASK, handle)
