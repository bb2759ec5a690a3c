"""The `admin` step: post the submission record to the central admin system.

The request is signed (``X-Handin-Signature: sha256=<hex>``, an HMAC-SHA256 of
``"<timestamp>." + body`` with the shared secret, timestamp in
``X-Handin-Timestamp``) so the receiver can reject forgeries and stale replays,
and carries ``Idempotency-Key: submission-<id>``, the same on every retry, so a
retry after a lost answer never files the submission twice.

What the answer means: 2xx → done; 5xx, 408, 429, a timeout or a broken
connection → try again later; any other 4xx → the admin system refused the
record for good.

The student sees only what happened in general terms (not accepted yet, will
retry; refused; gave up). What the admin system said (its error body, which
may name its internals) and our transport errors (internal addresses) go to
the log and to the step result's ``detail``, a staff-only field: the
per-audience projection leaves it out of what students receive.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import weakref
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import aiohttp
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.auth import hmac_sha256_hex
from core.clock import isoformat
from core.models import SubmissionStep
from core.receipts import ReceiptFacts, read_facts
from workers.base import on_worker_shutdown, step_worker_settings
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError

log = logging.getLogger(__name__)

TASK = "admin"
SIGNATURE_HEADER = "X-Handin-Signature"
TIMESTAMP_HEADER = "X-Handin-Timestamp"
# Answers a retry may fix, although they are 4xx.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})
MAX_REASON_CHARS = 500
# What the student reads on the step; the admin system's own words stay with staff (``detail``).
NOT_ACCEPTED_YET = "the central admin system did not accept the submission yet; handin will retry"
GAVE_UP = (
    "the central admin system did not accept the submission after {attempts} attempts; "
    "your submission itself is received and kept, and staff can see why"
)
REFUSED = "the central admin system refused the submission record (HTTP {status}); staff can see its reason"


@dataclass(frozen=True)
class SubmissionRecord:
    """What the admin system (and the student's receipt) learn about one submission."""

    id: int
    assignment_id: int
    assignment_title: str
    course_code: str
    course_title: str
    student_id: int
    student_email: str
    student_name: str
    attempt: int
    late: bool
    sha256: str
    size: int
    filename: str
    content_type: str
    received_at: datetime

    def as_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["received_at"] = isoformat(self.received_at)
        return data


async def load_submission_facts(
    sessions: async_sessionmaker[AsyncSession], submission_id: int
) -> tuple[ReceiptFacts, str | None]:
    """The submission with its assignment, course and student, and its scan step's state, read in
    one statement; a step whose submission is gone fails for good."""
    found = await read_facts(sessions, submission_id)
    if found is None:
        raise PermanentStepError(f"submission {submission_id} no longer exists")
    return found


def record_from(facts: ReceiptFacts) -> SubmissionRecord:
    submission, assignment, course, user = facts.submission, facts.assignment, facts.course, facts.student
    return SubmissionRecord(
        id=submission.id,
        assignment_id=assignment.id,
        assignment_title=assignment.title,
        course_code=course.code,
        course_title=course.title,
        student_id=user.id,
        student_email=user.email,
        student_name=user.name,
        attempt=submission.attempt,
        late=submission.late,
        sha256=submission.sha256,
        size=submission.size,
        filename=submission.original_filename,
        content_type=submission.content_type,
        received_at=submission.received_at,
    )


# One client session per event loop (a worker process has one), so the connection to the
# admin system is kept alive from job to job instead of a TCP (and TLS) handshake each.
# aiohttp rather than httpx: a POST and its answer cost about a quarter of the CPU here.
_CLIENTS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aiohttp.ClientSession] = weakref.WeakKeyDictionary()
# Enough of an answer for its reference or its reason; a larger one is cut there.
MAX_ANSWER_BYTES = 64 * 1024


def http_client() -> aiohttp.ClientSession:
    loop = asyncio.get_running_loop()
    client = _CLIENTS.get(loop)
    if client is None or client.closed:
        # trust_env: a proxy configured in the environment (HTTPS_PROXY, NO_PROXY) is used.
        client = _CLIENTS[loop] = aiohttp.ClientSession(trust_env=True)
    return client


async def close_http_client() -> None:
    client = _CLIENTS.pop(asyncio.get_running_loop(), None)
    if client is not None:
        await client.close()


on_worker_shutdown(close_http_client)


@dataclass(frozen=True)
class Answer:
    """What the admin system answered: status, reason phrase and (the start of) the body."""

    status: int
    reason: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def json(self) -> Any:
        return json.loads(self.body)


async def post(url: str, body: bytes, headers: dict[str, str], timeout_seconds: float) -> Answer:
    """POST ``body``; a redirect is an answer like any other, not followed (as a 3xx is no acceptance)."""
    timeout = aiohttp.ClientTimeout(total=timeout_seconds)
    async with http_client().post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False) as response:
        return Answer(response.status, response.reason or "", await response.content.read(MAX_ANSWER_BYTES))


def idempotency_key(submission_id: int) -> str:
    return f"submission-{submission_id}"


def signature(secret: str, timestamp: str, body: bytes) -> str:
    """The header value; binding the timestamp stops an old request being replayed as new."""
    return "sha256=" + hmac_sha256_hex(secret, timestamp.encode() + b"." + body)


def signed_headers(secret: str, submission_id: int, body: bytes, now: float | None = None) -> dict[str, str]:
    timestamp = str(int(now if now is not None else time.time()))
    return {
        "Content-Type": "application/json",
        "Idempotency-Key": idempotency_key(submission_id),
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(secret, timestamp, body),
    }


def refusal_reason(response: Answer) -> str:
    """The admin system's own words for a refusal, kept short: for staff and the log, never the student."""
    reason = ""
    try:
        payload = response.json()
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        for field in ("detail", "error", "message", "reason"):
            if payload.get(field):
                value = payload[field]
                reason = value if isinstance(value, str) else json.dumps(value)
                break
    if not reason:
        reason = response.text.strip() or response.reason
    return f"admin system answered {response.status}: {reason[:MAX_REASON_CHARS]}"


async def keep_detail(ctx: StepContext, detail: str) -> None:
    """Log what went wrong and keep it on the step's result as ``detail`` (staff only)."""
    log.warning(
        "admin system did not accept submission %s (attempt %s): %s",
        ctx.submission.id,
        ctx.attempt,
        detail,
        extra={"submission_id": ctx.submission.id, "attempt": ctx.attempt, "detail": detail},
    )
    async with ctx.sessions() as session, session.begin():
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == ctx.submission.id, SubmissionStep.step == TASK)
            .values(result={"detail": detail, "attempt": ctx.attempt})
        )


async def not_accepted(ctx: StepContext, detail: str) -> TransientStepError | PermanentStepError:
    """The error to raise for a failure a retry may fix: generic for the student, ``detail`` kept for staff."""
    await keep_detail(ctx, detail)
    max_tries = ctx.settings.retry_policy(TASK).max_tries
    if ctx.attempt >= max_tries:
        # Said here rather than by the runner's "(gave up …)" suffix, which would contradict "will retry".
        return PermanentStepError(GAVE_UP.format(attempts=ctx.attempt))
    return TransientStepError(NOT_ACCEPTED_YET)


async def handle(ctx: StepContext) -> Outcome:
    section = ctx.settings.admin
    if not section.url:
        return Outcome("skipped", {"reason": "no admin system configured (HANDIN_ADMIN__URL)"})
    facts, _ = await load_submission_facts(ctx.sessions, ctx.submission.id)
    record = record_from(facts)
    # The same bytes on every attempt: the receiver may compare a retry with the original.
    body = json.dumps(record.as_json(), sort_keys=True, separators=(",", ":")).encode()
    headers = signed_headers(section.secret, record.id, body)
    try:
        async with ctx.progress_if_slow("posting the submission record to the admin system"):
            response = await post(section.url, body, headers, section.timeout_seconds)
    except TimeoutError as error:
        detail = f"admin system did not answer within {section.timeout_seconds:g} s"
        raise await not_accepted(ctx, detail) from error
    except aiohttp.ClientError as error:
        detail = f"admin system unreachable: {error or type(error).__name__}"
        raise await not_accepted(ctx, detail) from error

    status = response.status
    if status >= 500 or status in RETRYABLE_CLIENT_ERRORS:
        raise await not_accepted(ctx, refusal_reason(response))
    if not 200 <= status < 300:
        await keep_detail(ctx, refusal_reason(response))
        raise PermanentStepError(REFUSED.format(status=status))
    try:
        payload = response.json()
    except ValueError:
        payload = {}
    reference = payload.get("reference") if isinstance(payload, dict) else None
    return Outcome(
        "succeeded",
        {"status": status, "reference": reference, "idempotency_key": headers["Idempotency-Key"]},
    )


WorkerSettings = step_worker_settings(TASK, handle)
