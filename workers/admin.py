"""The `admin` step: post the submission record to the central admin system.

The request is signed (``X-Handin-Signature: sha256=<hex>``, an HMAC-SHA256 of
``"<timestamp>." + body`` with the shared secret, timestamp in
``X-Handin-Timestamp``) so the receiver can reject forgeries and stale replays,
and carries ``Idempotency-Key: submission-<id>``, the same on every retry, so a
retry after a lost answer never files the submission twice.

What the answer means: 2xx → done; 5xx, 408, 429, a timeout or a broken
connection → try again later; any other 4xx → the admin system refused the
record for good, and its reason is shown on the step.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.auth import hmac_sha256_hex
from core.clock import isoformat
from core.models import Assignment, Course, Submission, User
from workers.base import step_worker_settings
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError

TASK = "admin"
SIGNATURE_HEADER = "X-Handin-Signature"
TIMESTAMP_HEADER = "X-Handin-Timestamp"
# Answers a retry may fix, although they are 4xx.
RETRYABLE_CLIENT_ERRORS = frozenset({408, 425, 429})
MAX_REASON_CHARS = 500


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


async def load_record(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> SubmissionRecord:
    """The submission with its assignment, course and student, read in one query."""
    async with sessions() as session:
        row = (
            await session.execute(
                select(Submission, Assignment, Course, User)
                .join(Assignment, Submission.assignment_id == Assignment.id)
                .join(Course, Assignment.course_id == Course.id)
                .join(User, Submission.user_id == User.id)
                .where(Submission.id == submission_id)
            )
        ).one_or_none()
    if row is None:
        raise PermanentStepError(f"submission {submission_id} no longer exists")
    submission, assignment, course, user = row
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


def refusal_reason(response: httpx.Response) -> str:
    """The admin system's own words for a refusal, kept short for the step's page."""
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
        reason = response.text.strip() or response.reason_phrase
    return f"admin system answered {response.status_code}: {reason[:MAX_REASON_CHARS]}"


async def handle(ctx: StepContext) -> Outcome:
    section = ctx.settings.admin
    if not section.url:
        return Outcome("skipped", {"reason": "no admin system configured (HANDIN_ADMIN__URL)"})
    record = await load_record(ctx.sessions, ctx.submission.id)
    # The same bytes on every attempt: the receiver may compare a retry with the original.
    body = json.dumps(record.as_json(), sort_keys=True, separators=(",", ":")).encode()
    headers = signed_headers(section.secret, record.id, body)
    await ctx.progress("posting the submission record to the admin system")
    try:
        async with httpx.AsyncClient(timeout=section.timeout_seconds) as client:
            response = await client.post(section.url, content=body, headers=headers)
    except httpx.TimeoutException as error:
        raise TransientStepError(f"admin system did not answer within {section.timeout_seconds:g} s") from error
    except httpx.TransportError as error:
        raise TransientStepError(f"admin system unreachable: {error or type(error).__name__}") from error

    status = response.status_code
    if status >= 500 or status in RETRYABLE_CLIENT_ERRORS:
        raise TransientStepError(f"admin system answered {status}")
    if not 200 <= status < 300:
        raise PermanentStepError(refusal_reason(response))
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
