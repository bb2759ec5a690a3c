"""Upload intake: everything that must happen before the student may leave, and nothing more.

Check rights, window and attempts; stream the file into the incoming area
while hashing it (refusing as soon as it is too big or not an accepted kind);
write the submission, its step rows and its events in one transaction;
publish and enqueue the first step; answer 202. Every slow thing is a worker's.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from arq.connections import ArqRedis
from fastapi import HTTPException, Request, status
from redis.exceptions import RedisError
from sqlalchemy import Table, and_, bindparam, func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import ClientDisconnect

from api import metrics
from api.multipart_stream import BodyTooLarge, MalformedUpload, MultipartStream, boundary_of
from api.record_upload import record_upload, reserve_submission_id
from core import keys
from core.access import STUDENT
from core.clock import isoformat, utcnow
from core.db import entities_from, entity_columns, postgres_engine, rows_of
from core.deadlines import WindowState, student_window
from core.events import Envelope, StagedEvents
from core.models import Assignment, Enrolment, Extension, Submission, SubmissionStep, User
from core.pipeline import FIRST_STEPS, STEPS, StepState, SubmissionStatus
from core.queues import publish_and_enqueue
from core.settings import Settings
from core.sniff import SNIFF_BYTES, TEXT, Sniffed, TextCheck, accepts, sanitise_filename, sniff
from core.storage import Area, Storage, TooLarge, new_key
from core.unit_of_work import unit_of_work

log = logging.getLogger(__name__)

FILE_FIELD = "file"
# Room for the multipart boundaries and part headers around the file itself.
MULTIPART_OVERHEAD = 64 * 1024
# After refusing an oversized body, read (and drop) this much more so the client sees the 413.
DRAIN_AFTER_REFUSAL = 8 * 1024 * 1024
IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,200}")
SUBMISSIONS: Table = Submission.__table__  # type: ignore[assignment]
SUBMISSION_STEPS: Table = SubmissionStep.__table__  # type: ignore[assignment]
KIND_LABELS = {"pdf": "PDF", "text": "plain text", "image": "image (PNG, JPEG, GIF, WebP)", "docx": "Word (DOCX)"}


class Refused(HTTPException):
    """A refusal with its reason for the metrics; the detail is what the student reads."""

    def __init__(self, status_code: int, reason: str, detail: str) -> None:
        super().__init__(status_code, detail)
        self.reason = reason


@dataclass(frozen=True)
class Accepted:
    submission_id: int
    replayed: bool

    def body(self) -> dict[str, Any]:
        return {
            "id": self.submission_id,
            "topic": keys.submission_topic(self.submission_id),
            "status_url": f"/api/submissions/{self.submission_id}",
        }


@dataclass(frozen=True)
class Window:
    """What the pre-checks decided: the assignment and how this upload counts."""

    assignment: Assignment
    late: bool
    max_bytes: int
    attempt: int  # the attempt number this upload takes, unless another upload takes it first


@dataclass(frozen=True)
class Landed:
    key: str
    size: int
    sha256: str
    filename: str
    sniffed: Sniffed


class Intake:
    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, storage: Storage
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.redis = redis
        self.storage = storage

    async def submit(self, request: Request, user: User, assignment_id: int, idempotency_key: str | None) -> Accepted:
        try:
            return await self._submit(request, user, assignment_id, idempotency_key)
        except Refused as refusal:
            metrics.upload_refused(refusal.reason)
            raise

    async def _submit(self, request: Request, user: User, assignment_id: int, idempotency_key: str | None) -> Accepted:
        now = utcnow()  # the deadline is judged by when the upload started, not how long it took
        if idempotency_key is not None and not IDEMPOTENCY_KEY.fullmatch(idempotency_key):
            raise Refused(400, "bad_idempotency_key", "The Idempotency-Key header must be 1-200 printable characters.")
        # Reads each on its own: what decides is _record's transaction, which checks again.
        if idempotency_key and (
            earlier := await earlier_submission(self.sessions, user, assignment_id, idempotency_key)
        ):
            return Accepted(earlier, replayed=True)
        window = await check_window(self.sessions, self.settings, user, assignment_id, now)
        _check_declared_length(request, window.max_bytes)
        landed = await self._receive_file(request, window)
        return await self.accept(user, window, landed, idempotency_key, now)

    async def accept(
        self, user: User, window: Window, landed: Landed, idempotency_key: str | None, started: datetime
    ) -> Accepted:
        """Record a landed file as a submission, publish, enqueue the first step (plain and resumable uploads).

        ``started`` is when the upload began: the window was judged by it. The landed
        file is removed if recording fails or an earlier upload with the key won.
        """
        try:
            accepted, envelopes = await self._record(user, window, landed, idempotency_key, started)
        except BaseException:
            await self.storage.delete(Area.incoming, landed.key)
            raise
        if accepted.replayed:
            await self.storage.delete(Area.incoming, landed.key)
            return accepted
        await self._publish_and_enqueue(accepted.submission_id, envelopes)
        metrics.upload_accepted(landed.size)
        return accepted

    async def _receive_file(self, request: Request, window: Window) -> Landed:
        try:
            boundary = boundary_of(request.headers.get("content-type"))
        except MalformedUpload as error:
            raise Refused(
                400, "malformed", f"Send the file as multipart/form-data in a field named '{FILE_FIELD}'."
            ) from error
        body = MultipartStream(boundary, request.stream(), max_body_bytes=window.max_bytes + MULTIPART_OVERHEAD)
        try:
            return await self._stream_into_incoming(body, window)
        except (TooLarge, BodyTooLarge) as error:
            await body.drain(DRAIN_AFTER_REFUSAL)
            raise too_large(window.max_bytes) from error
        except Refused:
            await body.drain(DRAIN_AFTER_REFUSAL)
            raise
        except MalformedUpload as error:
            raise Refused(400, "malformed", f"The upload was not valid multipart/form-data: {error}.") from error
        except ClientDisconnect as error:
            raise Refused(400, "disconnected", "The upload was interrupted before the file arrived.") from error

    async def _stream_into_incoming(self, body: MultipartStream, window: Window) -> Landed:
        part = await body.next_file(FILE_FIELD)
        if part is None:
            raise Refused(422, "no_file", f"No file was sent: put it in the form field named '{FILE_FIELD}'.")
        data = body.part_data()
        prefix, complete = bytearray(), True
        async for chunk in data:
            prefix += chunk
            if len(prefix) > window.max_bytes:
                raise TooLarge(window.max_bytes)
            if len(prefix) >= SNIFF_BYTES:
                complete = False
                break
        sniffed = check_kind(bytes(prefix), complete, window.assignment.accepted_types)
        accepted_types = window.assignment.accepted_types
        key = new_key(window.assignment.id)
        chunks = _checked(bytes(prefix), data if not complete else None, sniffed)
        try:
            stored = await self.storage.put_stream(Area.incoming, key, chunks, max_bytes=window.max_bytes)
        except NotText as error:
            raise not_text(accepted_types) from error
        await body.drain(MULTIPART_OVERHEAD)  # the closing boundary
        return Landed(key, stored.size, stored.sha256, sanitise_filename(part.filename), sniffed)

    async def _record(
        self, user: User, window: Window, landed: Landed, idempotency_key: str | None, now: datetime
    ) -> tuple[Accepted, list[Envelope]]:
        """Submission + step rows + events, all or nothing; the events' envelopes, to publish.

        The first try takes the attempt number the window check counted: on PostgreSQL in
        one statement (api.record_upload). The unique (assignment, user, attempt) constraint
        catches a concurrent upload that took it meanwhile, as the idempotency key's catches
        one with the same key: then a transaction looks again (the earlier upload with the
        key, the attempts counted again), retried while other uploads keep winning.
        """
        attempt: int | None = window.attempt
        engine = postgres_engine(self.sessions)
        if engine is not None and attempt is not None:
            values = _submission_values(user, window, landed, idempotency_key, attempt, now)
            try:
                submission_id = await reserve_submission_id(engine)
                events = StagedEvents()
                _stage_received(events, user, window, landed, submission_id, attempt)
                envelopes = await record_upload(
                    engine, {"id": submission_id, **values}, _first_step_states(now), events.staged
                )
                return Accepted(submission_id, replayed=False), envelopes
            except asyncpg.UniqueViolationError:
                log.info("intake raced another upload; retrying", extra={"user_id": user.id})
                attempt = None
        for _ in range(5):
            try:
                # Published by the caller: a publish cut short must not look like a failed record,
                # which deletes the landed file.
                async with unit_of_work(self.sessions, None) as work:
                    session = work.session
                    if idempotency_key and (
                        earlier := await _by_idempotency_key(session, user, window.assignment.id, idempotency_key)
                    ):
                        return Accepted(earlier, replayed=True), []
                    if attempt is None:
                        attempt = await _check_attempts(session, user, window.assignment)
                    submission_id = await _insert(session, user, window, landed, idempotency_key, attempt, now)
                    _stage_received(work, user, window, landed, submission_id, attempt)
                return Accepted(submission_id, replayed=False), work.envelopes
            except IntegrityError:
                # Same idempotency key or same attempt number committed first: look again.
                log.info("intake raced another upload; retrying", extra={"user_id": user.id})
                attempt = None
        raise Refused(409, "conflict", "Too many uploads at once for this assignment; try again.")

    async def _publish_and_enqueue(self, submission_id: int, envelopes: list[Envelope]) -> None:
        """The upload's events, then its first steps' jobs, in one round trip."""
        try:
            await publish_and_enqueue(self.redis, envelopes, FIRST_STEPS, submission_id)
        except (RedisError, OSError) as error:
            # The step rows say "queued"; the reconciler re-enqueues them when Redis is back.
            log.warning(
                "enqueue failed; reconciler will retry",
                extra={"submission_id": submission_id, "steps": list(FIRST_STEPS), "error": str(error)},
            )


# One round trip: the assignment, the student's role on its course, any extension, attempts used.
_WINDOW = (
    select(
        *entity_columns(Assignment),
        Enrolment.role,
        Extension.deadline.label("extended_deadline"),
        Extension.cutoff_at.label("extended_cutoff"),
        select(func.count(Submission.id))
        .where(Submission.user_id == bindparam("user_id"), Submission.assignment_id == Assignment.id)
        .scalar_subquery()
        .label("attempts_used"),
    )
    .outerjoin(Enrolment, and_(Enrolment.course_id == Assignment.course_id, Enrolment.user_id == bindparam("user_id")))
    .outerjoin(Extension, and_(Extension.assignment_id == Assignment.id, Extension.user_id == bindparam("user_id")))
    .where(Assignment.id == bindparam("assignment_id"))
)
_BY_IDEMPOTENCY_KEY = select(Submission.id).where(
    Submission.user_id == bindparam("user_id"),
    Submission.assignment_id == bindparam("assignment_id"),
    Submission.idempotency_key == bindparam("key"),
)


async def earlier_submission(
    sessions: async_sessionmaker[AsyncSession], user: User, assignment_id: int, key: str
) -> int | None:
    """The submission an earlier upload with this idempotency key recorded, if any (a read on its own)."""
    rows = await rows_of(sessions, _BY_IDEMPOTENCY_KEY, _key_parameters(user, assignment_id, key))
    return int(rows[0]["id"]) if rows else None


async def check_window(
    sessions: async_sessionmaker[AsyncSession], settings: Settings, user: User, assignment_id: int, now: datetime
) -> Window:
    """Enrolment, window and attempts as of ``now`` (when the upload started); a Refused says which failed."""
    rows = await rows_of(sessions, _WINDOW, {"user_id": user.id, "assignment_id": assignment_id})
    found = rows[0] if rows else None
    if found is None:
        raise Refused(404, "no_assignment", "There is no such assignment.")
    [assignment] = entities_from(found, Assignment)
    role, extended_deadline, extended_cutoff = found["role"], found["extended_deadline"], found["extended_cutoff"]
    attempts_used = found["attempts_used"]
    if role != STUDENT:
        raise Refused(
            403, "not_enrolled", "You are not enrolled as a student on this course, so you cannot submit here."
        )
    # The same rule the pages show (core.deadlines): an extension only ever adds time.
    dates = student_window(
        assignment.opens_at, assignment.deadline, assignment.cutoff_at, extended_deadline, extended_cutoff
    )
    state = dates.state_at(now)
    if state is WindowState.not_open:
        raise Refused(403, "not_open", f"This assignment opens at {isoformat(assignment.opens_at)}; submit after that.")
    if state is WindowState.closed:
        raise Refused(
            403,
            "after_cutoff",
            f"The cut-off for this assignment passed at {isoformat(dates.cutoff_at)}; submissions are closed.",
        )
    attempt = _next_attempt(assignment, attempts_used or 0)
    max_bytes = min(assignment.max_bytes, settings.max_upload_bytes)
    return Window(assignment=assignment, late=state is WindowState.late, max_bytes=max_bytes, attempt=attempt)


def check_kind(prefix: bytes, complete: bool, accepted_types: list[str]) -> Sniffed:
    """The kind sniffed from the file's first bytes (``complete``: they are the whole file), if accepted."""
    if not prefix:
        raise Refused(422, "empty", "The file is empty.")
    sniffed = sniff(prefix, complete=complete)
    if sniffed is None or not accepts(accepted_types, sniffed):
        raise Refused(415, "type", _type_refusal(sniffed, accepted_types))
    return sniffed


def not_text(accepted_types: list[str]) -> Refused:
    """The refusal for a file that began as text and turned binary further in."""
    return Refused(415, "type", _type_refusal(None, accepted_types))


class NotText(Exception):
    """A file that started as text turned out to be binary further in."""


async def _checked(prefix: bytes, rest: AsyncIterator[bytes] | None, sniffed: Sniffed) -> AsyncIterator[bytes]:
    """The file's bytes: the sniffed prefix, then the rest; text stays checked to the end."""
    check = TextCheck() if sniffed.kind == TEXT else None
    if check is not None:
        check.feed(prefix)
    yield prefix
    if rest is not None:
        async for chunk in rest:
            if check is not None and not check.feed(chunk):
                raise NotText()
            yield chunk
    if check is not None and not check.finish():
        raise NotText()


# Built once, on the tables: a statement made per upload is cache-keyed and its values coerced each
# time; the columns inserted are the parameters' keys.
_INSERT_SUBMISSION = insert(SUBMISSIONS).returning(SUBMISSIONS.c.id)
_INSERT_STEPS = insert(SUBMISSION_STEPS)


async def _insert(
    session: AsyncSession,
    user: User,
    window: Window,
    landed: Landed,
    idempotency_key: str | None,
    attempt: int,
    now: datetime,
) -> int:
    """The submission and its step rows in two statements (Core, no unit-of-work bookkeeping)."""
    values = _submission_values(user, window, landed, idempotency_key, attempt, now)
    submission_id: int = (await session.execute(_INSERT_SUBMISSION, values)).scalar_one()
    await session.execute(
        _INSERT_STEPS,
        [
            {"submission_id": submission_id, "step": name, "state": state, "queued_at": queued_at}
            for name, state, queued_at in _first_step_states(now)
        ],
    )
    return submission_id


def _submission_values(
    user: User, window: Window, landed: Landed, idempotency_key: str | None, attempt: int, now: datetime
) -> dict[str, Any]:
    return {
        "assignment_id": window.assignment.id,
        "user_id": user.id,
        "attempt": attempt,
        "late": window.late,
        "sha256": landed.sha256,
        "size": landed.size,
        "original_filename": landed.filename,
        "content_type": landed.sniffed.content_type,
        "kind": landed.sniffed.kind,
        "storage_key": landed.key,
        "status": SubmissionStatus.processing.value,
        "idempotency_key": idempotency_key,
        "upload_started_at": now,
        "received_at": utcnow(),  # accepted: the file has landed and this records it
    }


def _first_states() -> dict[str, str]:
    """Each step of a new submission, in order, and its state: the first steps queued, the rest pending."""
    return {step.name: (StepState.queued if step.name in FIRST_STEPS else StepState.pending).value for step in STEPS}


def _first_step_states(now: datetime) -> list[tuple[str, str, datetime | None]]:
    """Each step of a new submission, in order: (name, state, queued at)."""
    queued = StepState.queued.value
    return [(name, state, now if state == queued else None) for name, state in _first_states().items()]


async def _by_idempotency_key(session: AsyncSession, user: User, assignment_id: int, key: str) -> int | None:
    found: int | None = await session.scalar(_BY_IDEMPOTENCY_KEY, _key_parameters(user, assignment_id, key))
    return found


def _key_parameters(user: User, assignment_id: int, key: str) -> dict[str, Any]:
    return {"user_id": user.id, "assignment_id": assignment_id, "key": key}


async def _check_attempts(session: AsyncSession, user: User, assignment: Assignment) -> int:
    """The next attempt number, or a refusal when all are used."""
    used = await session.scalar(
        select(func.count(Submission.id)).where(
            Submission.user_id == user.id, Submission.assignment_id == assignment.id
        )
    )
    return _next_attempt(assignment, used or 0)


def _next_attempt(assignment: Assignment, used: int) -> int:
    if used >= assignment.max_attempts:
        raise Refused(
            409,
            "attempts",
            f"You have used all {assignment.max_attempts} attempts for this assignment.",
        )
    return used + 1


def _stage_received(
    batch: StagedEvents, user: User, window: Window, landed: Landed, submission_id: int, attempt: int
) -> None:
    """The upload's two events, staged: written in one statement with the submission (PostgreSQL,
    api.record_upload) or when the unit of work commits (its flush), the course staff topic's seq
    row locked only from then to the commit."""
    steps = _first_states()
    batch.stage(
        keys.submission_topic(submission_id),
        "submission.received",
        {
            "submission_id": submission_id,
            "assignment_id": window.assignment.id,
            "attempt": attempt,
            "late": window.late,
            "size": landed.size,
            "sha256": landed.sha256,
            "filename": landed.filename,
            "kind": landed.sniffed.kind,
            "status": SubmissionStatus.processing.value,
            "steps": steps,
        },
        actor="student",
        actor_id=user.id,
    )
    batch.stage(
        keys.course_staff_topic(window.assignment.course_id),
        "submission.arrived",
        {
            "submission_id": submission_id,
            "assignment_id": window.assignment.id,
            "course_id": window.assignment.course_id,
            "late": window.late,
            "size": landed.size,
            "kind": landed.sniffed.kind,
        },
        actor="student",
        actor_id=user.id,
    )


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise too_large(max_bytes)


def too_large(max_bytes: int) -> Refused:
    return Refused(
        status.HTTP_413_CONTENT_TOO_LARGE,
        "too_large",
        f"The file is larger than this assignment's limit of {_size(max_bytes)}.",
    )


def _type_refusal(sniffed: Sniffed | None, accepted_types: list[str]) -> str:
    accepted = ", ".join(KIND_LABELS.get(kind, kind) for kind in accepted_types) or "any recognised file"
    found = "we could not recognise its type" if sniffed is None else f"it is a {sniffed.kind} file"
    return f"This file type is not accepted ({found}). Accepted: {accepted}."


def _size(count: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= scale:
            return f"{count / scale:.3g} {unit}"
    return f"{count} bytes"
