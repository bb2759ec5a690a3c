"""The `receipt` step: email the student proof of what we received.

The receipt carries the submission id, assignment, course, file name, size,
SHA-256, the time received and whether it was late, so a student can later
show exactly which file was handed in and when; the signed receipt
(``core.receipts``) as a JSON attachment, with links to download it again and
to check it (``/verify``); a link back to the
submission's page (``HANDIN_PUBLIC_URL`` + ``/submissions/<id>``); and, when
the scan step was skipped because no scanner runs, a line saying the file was
not checked for viruses (never implying it was).

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

Emailed announcements
---------------------
The same worker mails a staff announcement posted with ``email: true`` to every
student enrolled at that moment (``announcement_mail``), the same way: one
Message-ID per announcement and student, and each student the mail server
accepted one for is added to ``keys.announcement_mailed``, so a rerun, a retry
after a crash or the next part sends to the rest only. A part sends for at most
half the pool's time limit, then queues the next part, so a large course never
outruns the time the chart gives a stopping worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import uuid
import weakref
from dataclasses import dataclass
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.application import MIMEApplication
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Any

import aiosmtplib
from arq import Retry, func
from arq.worker import Function
from sqlalchemy import select, update

from core import chat, keys
from core.access import STUDENT
from core.clock import utcnow
from core.db import statement_sessions
from core.models import Course, Enrolment, Event, SubmissionStep, User
from core.pipeline import StepState
from core.receipts import ReceiptFacts, ReceiptKeyError, receipt_bytes, receipt_filename
from core.receipts import build_receipt as build_signed_receipt
from core.settings import Settings, SmtpSettings, get_settings
from workers.admin import SubmissionRecord, load_submission_facts, record_from
from workers.base import ARQ_EXTRA_TRIES, on_worker_shutdown, step_function, worker_settings
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError

log = logging.getLogger(__name__)

TASK = "receipt"
# The mark only has to outlive the gap between the send and the step's commit.
SENT_MARK_TTL_SECONDS = 14 * 24 * 3600
# 535 (bad credentials) is a configuration fault an operator can fix while we retry.
RETRYABLE_PERMANENT_CODES = frozenset({535})
# C0 and C1 controls, DEL, and Unicode's line and paragraph separators.
_CONTROLS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
NOT_SCANNED_LINE = "NOT virus-scanned: no virus scanner runs on this server, so the file was not checked"


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


def submission_url(public_url: str, submission_id: int) -> str:
    return f"{public_url.rstrip('/')}/submissions/{submission_id}"


def receipt_text(
    record: SubmissionRecord, link: str | None = None, scanned: bool = True, signed: SignedReceiptLinks | None = None
) -> str:
    received = record.received_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    timing = "LATE (after the deadline)" if record.late else "on time"
    extra = [f"  Virus scan:     {NOT_SCANNED_LINE}"] if not scanned else []
    follow = [f"See your submission, its progress and (once released) its grade: {link}", ""] if link else []
    if signed is not None:
        follow += [
            f"Your signed receipt is attached ({signed.filename}); download it again at {signed.download}",
            f"Anyone can check it, and that a file is the one you handed in, at {signed.verify}",
            "",
        ]
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
            *extra,
            "",
            *follow,
            "Keep this email: the SHA-256 identifies exactly the file you handed in.",
            "",
        ]
    )


def header_text(value: str) -> str:
    """Text typed by staff or students, made safe for a header: every run of control characters is one space.

    A CR or LF would start a new header (``Bcc:`` injection): the compat32 classes
    the messages are built on write a value as it is given. Folding a long value is
    left to the email package when the message is written.
    """
    return _CONTROLS.sub(" ", value).strip()


@dataclass(frozen=True)
class SignedReceiptLinks:
    """The signed receipt (core.receipts) that goes with the email: attached, and where to get and check it."""

    filename: str
    content: bytes
    download: str
    verify: str


# Bodies in quoted-printable: the text stays readable in the raw message, as base64 would not.
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = QP


def address(name: str, email: str) -> str:
    return formataddr((header_text(name), email), charset="utf-8")


def new_message(headers: dict[str, str], text: str, attachment: SignedReceiptLinks | None = None) -> Message:
    """A plain-text mail, with the signed receipt attached when given.

    Built on the email package's compat32 classes: EmailMessage parses every header
    value into objects and re-folds them when written: a receipt cost 4.7 ms of CPU to
    build and write that way, 1.2 ms on these (measured alone on this machine).
    """
    body = MIMEText(text, "plain", _UTF8)
    message: Message = body
    if attachment is not None:
        message = MIMEMultipart()
        message.attach(body)
        part = MIMEApplication(attachment.content, "json")
        part.add_header("Content-Disposition", "attachment", filename=attachment.filename)
        message.attach(part)
    for name, value in headers.items():
        # Non-ASCII text as RFC 2047 encoded words, folded knowing the header's name.
        message[name] = value if value.isascii() else Header(value, "utf-8", header_name=name)
    return message


def build_receipt(
    record: SubmissionRecord,
    section: SmtpSettings,
    link: str | None = None,
    scanned: bool = True,
    signed: SignedReceiptLinks | None = None,
) -> Message:
    late = " (late)" if record.late else ""
    title, course = header_text(record.assignment_title), header_text(record.course_code)
    headers = {
        "From": address(*parseaddr(section.sender)),
        "To": address(record.student_name, record.student_email),
        "Subject": f"Receipt: {title}, {course} — submission {record.id}{late}",
        "Date": format_datetime(utcnow()),
        "Message-ID": message_id(record.id, section.sender),
        # RFC 3834: no auto-replies (vacation notices) back to us.
        "Auto-Submitted": "auto-generated",
    }
    return new_message(headers, receipt_text(record, link, scanned, signed), signed)


def outbox_path(section: SmtpSettings, mid: str) -> Path:
    return Path(section.outbox_dir) / f"{mid.strip('<>')}.eml"


async def to_outbox(section: SmtpSettings, message: Message) -> Path:
    """Without a mail server: the message as <Message-ID>.eml in the outbox (a rerun overwrites it)."""
    path = outbox_path(section, str(message["Message-ID"]))
    await asyncio.to_thread(_write_atomically, path, message.as_bytes())
    return path


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
    async with statement_sessions(ctx.sessions)() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == ctx.submission.id, SubmissionStep.step == TASK)
            .values(result={"message_id": mid, "sending_since": utcnow().isoformat(), "attempt": ctx.attempt})
        )


@dataclass
class _Mailer:
    """The SMTP connection this event loop keeps open, and what it was opened with."""

    client: aiosmtplib.SMTP
    options: dict[str, Any]


# One SMTP connection per event loop (a worker process has one), kept open from job to
# job: a receipt costs the MAIL/RCPT/DATA exchange instead of a TCP (and TLS) handshake,
# EHLO and login each. aiosmtplib serialises the jobs' sends on it.
_MAILERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailer] = weakref.WeakKeyDictionary()
_CONNECTING: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()


def _smtp_options(section: SmtpSettings) -> dict[str, Any]:
    options: dict[str, Any] = {
        "hostname": section.host,
        "port": section.port,
        "start_tls": section.starttls,
        "timeout": section.timeout_seconds,
    }
    if section.username:
        options.update(username=section.username, password=section.password or "")
    return options


async def _connection(section: SmtpSettings) -> aiosmtplib.SMTP:
    """This loop's open connection to the configured server, opened (and logged in) if need be."""
    loop = asyncio.get_running_loop()
    options = _smtp_options(section)
    lock = _CONNECTING.setdefault(loop, asyncio.Lock())
    async with lock:
        mailer = _MAILERS.get(loop)
        if mailer is not None and mailer.options == options and mailer.client.is_connected:
            return mailer.client
        if mailer is not None:
            await _drop(mailer.client)
        client = aiosmtplib.SMTP(**options)
        try:
            await client.connect()
        except BaseException:
            client.close()  # connected but refused (a failed login): no half-open socket left behind
            raise
        _MAILERS[loop] = _Mailer(client, options)
        return client


async def _drop(client: aiosmtplib.SMTP) -> None:
    loop = asyncio.get_running_loop()
    mailer = _MAILERS.get(loop)
    if mailer is not None and mailer.client is client:
        del _MAILERS[loop]
    if client.is_connected:
        with contextlib.suppress(aiosmtplib.SMTPException, OSError, TimeoutError):
            await client.quit()
    client.close()


async def close_smtp() -> None:
    """Say QUIT on this loop's kept connection (a stopping worker)."""
    mailer = _MAILERS.get(asyncio.get_running_loop())
    if mailer is not None:
        await _drop(mailer.client)


async def _send_kept(message: Message, section: SmtpSettings) -> str:
    # A kept connection the server has since closed (its idle timeout) fails at once:
    # open a new one and send there. Other failures close it, so the retry starts afresh;
    # a refusal (4xx/5xx) leaves it usable (aiosmtplib resets the envelope).
    for attempt in (1, 2):
        client = await _connection(section)
        try:
            _, response = await client.send_message(message)
            return str(response)
        except aiosmtplib.SMTPServerDisconnected:
            await _drop(client)
            if attempt == 2:
                raise
        except (aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPResponseException):
            raise
        except (aiosmtplib.SMTPException, OSError, TimeoutError):
            await _drop(client)
            raise
    raise AssertionError("unreachable")


async def send(message: Message, section: SmtpSettings) -> str:
    """Hand the message to the mail server over the kept connection; returns its acceptance line."""
    try:
        return await _send_kept(message, section)
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


def signed_receipt(ctx: StepContext, facts: ReceiptFacts) -> SignedReceiptLinks:
    submission_id = facts.submission.id
    try:
        document = build_signed_receipt(facts, ctx.settings)
    except ReceiptKeyError as error:
        # A configuration fault an operator can fix while the step retries.
        raise TransientStepError(f"cannot sign the receipt: {error}") from error
    public = ctx.settings.public_url.rstrip("/")
    return SignedReceiptLinks(
        receipt_filename(submission_id),
        receipt_bytes(document),
        f"{public}/api/submissions/{submission_id}/receipt",
        f"{public}/verify",
    )


async def handle(ctx: StepContext) -> Outcome:
    section = ctx.settings.smtp
    # One read serves the email's text, the signed receipt and whether the file was scanned.
    facts, scan_state = await load_submission_facts(ctx.sessions, ctx.submission.id)
    record = record_from(facts)
    link = submission_url(ctx.settings.public_url, record.id)
    signed = signed_receipt(ctx, facts)
    scanned = scan_state != StepState.skipped.value
    message = build_receipt(record, section, link, scanned=scanned, signed=signed)
    mid = str(message["Message-ID"])
    result: dict[str, Any] = {"message_id": mid, "to": record.student_email}

    if not section.host:
        path = await to_outbox(section, message)
        return Outcome("succeeded", {**result, "delivery": "outbox", "file": path.name})

    sent_mark = keys.receipt_sent(record.id)
    if await ctx.redis.exists(sent_mark):
        # An earlier attempt got the 250 but died before the step was recorded.
        return Outcome("succeeded", {**result, "delivery": "smtp", "already_accepted": True})
    if ctx.previous_result.get("message_id"):
        log.info("resending a receipt an earlier attempt did not confirm", extra={"submission_id": record.id})
    await record_intent(ctx, mid)
    async with ctx.progress_if_slow("sending the receipt email"):
        response = await send(message, section)
    await ctx.redis.set(sent_mark, utcnow().isoformat(), ex=SENT_MARK_TTL_SECONDS)
    return Outcome("succeeded", {**result, "delivery": "smtp", "server_response": response})


# ---------------------------------------------------------------------------- announcements


@dataclass(frozen=True)
class Recipient:
    id: int
    name: str
    email: str


def announcement_message_id(course_id: int, seq: int, user_id: int, sender: str) -> str:
    domain = parseaddr(sender)[1].rpartition("@")[2] or "handin.local"
    return f"<announcement-{course_id}-{seq}.{user_id}@{domain}>"


def build_announcement(
    course: Course, seq: int, text: str, recipient: Recipient, section: SmtpSettings, public_url: str
) -> Message:
    page = f"{public_url.rstrip('/')}/courses/{course.id}"
    headers = {
        "From": address(*parseaddr(section.sender)),
        "To": address(recipient.name, recipient.email),
        "Subject": f"Announcement: {header_text(course.code)} {header_text(course.title)}",
        "Date": format_datetime(utcnow()),
        "Message-ID": announcement_message_id(course.id, seq, recipient.id, section.sender),
        "Auto-Submitted": "auto-generated",
    }
    return new_message(
        headers,
        f"Hello {recipient.name},\n\nthe staff of {course.code} {course.title} posted an announcement:\n\n"
        f"{text}\n\nIt is pinned on the course page: {page}\n",
    )


async def _announcement(ctx: dict[str, Any], course_id: int, seq: int) -> tuple[Course, str, list[Recipient]] | None:
    """The announcement's text and the students to mail, or None when there is nothing to send."""
    async with ctx["sessions"]() as session:
        event = await session.scalar(
            select(Event).where(
                Event.topic == keys.course_topic(course_id), Event.seq == seq, Event.type == chat.ANNOUNCEMENT_TYPE
            )
        )
        data = event.data if event is not None else {}
        course = await session.get(Course, course_id)
        # Hidden (or gone) before the mail went out: students no longer see it, so it is not sent.
        if course is None or not data.get("emailed") or data.get("hidden") or not data.get("text"):
            return None
        rows = await session.execute(
            select(User.id, User.name, User.email)
            .join(Enrolment, Enrolment.user_id == User.id)
            .where(Enrolment.course_id == course_id, Enrolment.role == STUDENT)
            .order_by(User.id)
        )
        return course, str(data["text"]), [Recipient(row.id, row.name, row.email) for row in rows]


async def announcement_mail(ctx: dict[str, Any], course_id: int, seq: int, part: int = 0) -> str:
    """Mail announcement ``seq`` to every enrolled student not mailed yet (docstring above)."""
    settings: Settings = ctx["settings"]
    section = settings.smtp
    found = await _announcement(ctx, course_id, seq)
    if found is None:
        return "nothing to send"
    course, text, recipients = found
    mailed_key = keys.announcement_mailed(course_id, seq)
    mailed = {int(member) for member in await ctx["redis"].smembers(mailed_key)}
    policy = settings.retry_policy(TASK)
    stop_at = asyncio.get_running_loop().time() + policy.timeout_seconds / 2
    sent = 0
    for recipient in recipients:
        if recipient.id in mailed:
            continue
        if sent and asyncio.get_running_loop().time() > stop_at:  # each part sends at least one
            await chat.queue_announcement_mail(ctx["redis"], course_id, seq, part + 1)
            return f"sent {sent}; the rest in part {part + 1}"
        message = build_announcement(course, seq, text, recipient, section, settings.public_url)
        if not section.host:
            await to_outbox(section, message)
        else:
            try:
                await send(message, section)
            except PermanentStepError as error:  # this address is refused for good: the others still get it
                log.warning("announcement not delivered", extra={"user_id": recipient.id, "error": str(error)})
            except TransientStepError as error:
                raise Retry(defer=policy.delay(int(ctx.get("job_try", 1)))) from error
        async with ctx["redis"].pipeline(transaction=False) as pipe:  # one round trip per recipient
            pipe.sadd(mailed_key, recipient.id)
            pipe.expire(mailed_key, SENT_MARK_TTL_SECONDS)
            await pipe.execute()
        sent += 1
    return f"sent {sent}"


def functions(settings: Settings) -> list[Function]:
    """The receipt step and the announcement mail, both on the receipt queue."""
    policy = settings.retry_policy(TASK)
    return [
        step_function(TASK, handle, settings),
        func(
            announcement_mail,
            name=keys.ANNOUNCEMENT_MAIL_FUNCTION,
            timeout=policy.timeout_seconds + settings.worker.job_timeout_margin_seconds,
            max_tries=policy.max_tries + ARQ_EXTRA_TRIES,
        ),
    ]


on_worker_shutdown(close_smtp)
WorkerSettings = worker_settings(TASK, functions(get_settings()))
