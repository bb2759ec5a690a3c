"""Messages from the central admin system: a signed inbound webhook instead of nightly sync jobs.

The admin system posts one message per request (docs/admin-webhook.md, "Inbound"):

- ``extension.granted``: a student's later deadline (an ``Extension`` row; the student's open
  page moves its dates live, the autoscaler's forecast reads the row on its next cycle);
- ``enrolment.added`` / ``enrolment.removed``: through core.membership, so the routers re-check
  the user's open sockets at once;
- ``notice.student``: a flash for one user; ``notice.course``: a class message on ``course.<id>``
  and a flash for every member.

Trust: ``X-Handin-Signature: sha256=hex(HMAC-SHA256(secret, timestamp + "." + body))`` with the
timestamp within a replay window, the same scheme as the outbound webhook. Every message carries an
``Idempotency-Key``: the first message with a key is recorded in the audit trail (topic
``admin.inbound.<digest of the key>``, seq 1) together with the answer it got, in the transaction
that applies it; a repeat with the same body gets that answer again, with another body 409. Two
copies arriving at once both bump that topic's seq; the one that gets 2 rolls back.

A message that is malformed, of an unknown type or about something handin does not have is refused
with a 4xx naming the problem, before anything is written.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys, membership
from core.chat import MESSAGE_TYPE
from core.clock import isoformat
from core.deadlines import Window, student_window
from core.events import EventBatch
from core.flash import FlashSpec, add_flash, check_links
from core.models import Assignment, Course, Enrolment, Event, Extension, User
from core.unit_of_work import unit_of_work

SIGNATURE_HEADER = "X-Handin-Signature"
TIMESTAMP_HEADER = "X-Handin-Timestamp"
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
MAX_KEY_LENGTH = 200
ACTOR = "admin"
RECORD_TYPE = "admin.message"
INBOUND_TOPIC_PREFIX = "admin.inbound."


class MessageRefused(Exception):
    """The message is not accepted; nothing was changed. ``status`` is the HTTP answer."""

    def __init__(self, status: int, problem: str) -> None:
        super().__init__(problem)
        self.status = status
        self.problem = problem


# Signature ---------------------------------------------------------------------------------------


def sign(secret: str, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def check_signature(
    secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float, window_seconds: float
) -> None:
    """Refuse (401) a missing or wrong signature and a timestamp outside the replay window."""
    if not timestamp or not signature:
        raise MessageRefused(401, f"missing {TIMESTAMP_HEADER} or {SIGNATURE_HEADER} header")
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        raise MessageRefused(401, "bad signature")
    try:
        sent = int(timestamp)
    except ValueError:
        raise MessageRefused(401, f"{TIMESTAMP_HEADER} is not a Unix time in seconds") from None
    if abs(now - sent) > window_seconds:
        raise MessageRefused(401, f"timestamp is more than {window_seconds:g} s from handin's clock; not accepted")


def check_key(key: str | None) -> str:
    if not key or not key.strip():
        raise MessageRefused(400, f"missing {IDEMPOTENCY_HEADER} header")
    if len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise MessageRefused(400, f"{IDEMPOTENCY_HEADER} must be printable and at most {MAX_KEY_LENGTH} characters")
    return key


def inbound_topic(key: str) -> str:
    """The audit topic of one idempotency key (not a topic anyone can subscribe to)."""
    return INBOUND_TOPIC_PREFIX + hashlib.sha256(key.encode()).hexdigest()[:48]


# Messages ----------------------------------------------------------------------------------------


class _Data(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class _ForUser(_Data):
    """The person a message is about: handin's user id or their email (exactly one)."""

    user_id: int | None = None
    email: str | None = Field(default=None, max_length=320)

    @model_validator(mode="after")
    def _one_user(self) -> _ForUser:
        if (self.user_id is None) == (self.email is None):
            raise ValueError("give exactly one of user_id and email")
        return self


class _ForCourse(_Data):
    course_id: int | None = None
    course_code: str | None = Field(default=None, max_length=40)

    @model_validator(mode="after")
    def _one_course(self) -> _ForCourse:
        if (self.course_id is None) == (self.course_code is None):
            raise ValueError("give exactly one of course_id and course_code")
        return self


class ExtensionGranted(_ForUser):
    assignment_id: int
    deadline: AwareDatetime
    # Unset: the extended deadline plus the assignment's own gap between deadline and cut-off.
    cutoff_at: AwareDatetime | None = None

    @model_validator(mode="after")
    def _order(self) -> ExtensionGranted:
        if self.cutoff_at is not None and self.cutoff_at < self.deadline:
            raise ValueError("cutoff_at is before deadline")
        return self


class EnrolmentAdded(_ForUser, _ForCourse):
    role: Literal["student", "staff"] = "student"


class EnrolmentRemoved(_ForUser, _ForCourse):
    pass


class _Notice(_Data):
    text: str = Field(min_length=1, max_length=2000)
    kind: Literal["info", "success", "warning", "error"] = "info"
    link_url: str | None = Field(default=None, max_length=500)
    link_text: str | None = Field(default=None, max_length=200)


class StudentNotice(_ForUser, _Notice):
    pass


class CourseNotice(_ForCourse, _Notice):
    pass


MESSAGE_TYPES: dict[str, type[_Data]] = {
    "extension.granted": ExtensionGranted,
    "enrolment.added": EnrolmentAdded,
    "enrolment.removed": EnrolmentRemoved,
    "notice.student": StudentNotice,
    "notice.course": CourseNotice,
}


@dataclass(frozen=True)
class Message:
    type: str
    data: _Data


def parse_message(body: bytes) -> Message:
    """``{"type": …, "data": {…}}`` checked field by field; 400 for a body that is not JSON, else 422."""
    try:
        parsed = json.loads(body)
    except ValueError:
        raise MessageRefused(400, "the body is not JSON") from None
    if not isinstance(parsed, dict) or set(parsed) - {"type", "data"}:
        raise MessageRefused(422, 'the body must be an object {"type": …, "data": {…}} and nothing else')
    kind = parsed.get("type")
    model = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if model is None:
        raise MessageRefused(422, f"unknown message type {kind!r}; handin knows {', '.join(MESSAGE_TYPES)}")
    data = parsed.get("data")
    if not isinstance(data, dict):
        raise MessageRefused(422, f"{kind}: data must be an object")
    try:
        checked = model.model_validate(data)
    except ValidationError as error:
        raise MessageRefused(422, f"{kind}: {_first_problem(error)}") from None
    if isinstance(checked, _Notice):
        try:
            check_links(FlashSpec(text=checked.text, link_url=checked.link_url))
        except ValueError as error:
            raise MessageRefused(422, f"{kind}: {error}") from None
    return Message(str(kind), checked)


def _first_problem(error: ValidationError) -> str:
    first = error.errors()[0]
    where = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


# Applying ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


class _Duplicate(Exception):
    """Another request with this key committed first."""


async def receive(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, key: str, body: bytes, message: Message
) -> Answer:
    """Apply a checked message once per idempotency key; a repeat gets the first answer."""
    digest = hashlib.sha256(body).hexdigest()
    topic = inbound_topic(key)
    for _ in range(2):
        async with sessions() as session:
            earlier = await _first_record(session, topic)
        if earlier is not None:
            return _replay(earlier, digest)
        try:
            return await _apply(sessions, redis, key, topic, digest, message)
        except _Duplicate:
            continue
    raise MessageRefused(409, f"another request with {IDEMPOTENCY_HEADER} {key!r} is being applied; retry")


async def _first_record(session: AsyncSession, topic: str) -> Event | None:
    row: Event | None = await session.scalar(select(Event).where(Event.topic == topic, Event.seq == 1))
    return row


def _replay(record: Event, digest: str) -> Answer:
    data = record.data or {}
    if data.get("body_sha256") != digest:
        raise MessageRefused(409, f"this {IDEMPOTENCY_HEADER} was used for a different message")
    answer = data.get("answer") or {}
    return Answer(int(answer.get("status", 200)), dict(answer.get("body") or {}), replayed=True)


async def _apply(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, key: str, topic: str, digest: str, message: Message
) -> Answer:
    announce: int | None = None
    async with unit_of_work(sessions, redis) as work:
        session = work.session
        data = message.data
        # Everything the message names is looked up (and refused) before anything is written.
        if isinstance(data, ExtensionGranted):
            assignment = await _assignment(session, data.assignment_id)
            user = await _user(session, data)
            if await _role(session, user.id, assignment.course_id) != "student":
                raise MessageRefused(422, f"{_who(user)} is not a student of assignment {assignment.id}'s course")
            answer = await _record(work, topic, key, digest, message, f"extension for {_who(user)} on {assignment.id}")
            window = await _extend(session, assignment, user.id, data)
            await work.emit(
                keys.user_topic(user.id),
                "extension.updated",
                {
                    "assignment_id": assignment.id,
                    "deadline": isoformat(window.deadline),
                    "cutoff_at": isoformat(window.cutoff_at),
                    "source": ACTOR,
                },
                actor=ACTOR,
            )
        elif isinstance(data, EnrolmentAdded | EnrolmentRemoved):
            user = await _user(session, data)
            course = await _course(session, data)
            role = data.role if isinstance(data, EnrolmentAdded) else None
            if role is not None:
                effect = f"{_who(user)} enrolled in {course.code} as {role}"
                text = f"You are now enrolled in {course.code} {course.title} as {role}."
            elif await _role(session, user.id, course.id) is None:
                effect = f"{_who(user)} was not enrolled in {course.code}; nothing to do"
                text = ""
            else:
                effect = f"{_who(user)} removed from {course.code}"
                text = f"You are no longer enrolled in {course.code} {course.title}."
            answer = await _record(work, topic, key, digest, message, effect)
            if role is not None:
                await membership.enrol(session, user.id, course.id, role)
            else:
                await membership.unenrol(session, user.id, course.id)
            await work.emit(
                keys.course_staff_topic(course.id),
                "enrolment.updated",
                {"user_id": user.id, "course_id": course.id, "role": role, "source": ACTOR},
                actor=ACTOR,
            )
            if text:
                await add_flash(work, user.id, FlashSpec(text=text, dedupe_key=f"{topic}:{user.id}"))
            announce = user.id
        elif isinstance(data, StudentNotice):
            user = await _user(session, data)
            answer = await _record(work, topic, key, digest, message, f"notice for {_who(user)}")
            await add_flash(work, user.id, _flash(data, f"{topic}:{user.id}"))
        elif isinstance(data, CourseNotice):
            course = await _course(session, data)
            answer = await _record(work, topic, key, digest, message, f"notice for {course.code}")
            await work.emit(
                keys.course_topic(course.id),
                MESSAGE_TYPE,
                {"author_id": None, "args": [data.text], "kwargs": {"from": ACTOR, "kind": data.kind}},
                actor=ACTOR,
            )
            members = await session.scalars(select(Enrolment.user_id).where(Enrolment.course_id == course.id))
            for member in sorted(members):
                await add_flash(work, member, _flash(data, f"{topic}:{member}"))
        else:  # pragma: no cover - parse_message knows only the types above
            raise MessageRefused(422, f"unknown message type {message.type!r}")
    if announce is not None:
        await membership.announce(redis, announce)
    return answer


async def _record(work: EventBatch, topic: str, key: str, digest: str, message: Message, effect: str) -> Answer:
    """The message and its answer in the audit trail. This claims the key: of two requests with one key,
    the second to bump the topic's seq gets 2 and rolls back."""
    body = {
        "status": "applied",
        "type": message.type,
        "idempotency_key": key,
        "effect": effect,
        "reference": f"{topic}#1",
    }
    envelope = await work.emit(
        topic,
        RECORD_TYPE,
        {
            "idempotency_key": key,
            "body_sha256": digest,
            "type": message.type,
            "data": message.data.model_dump(mode="json", exclude_none=True),
            "answer": {"status": 200, "body": body},
        },
        actor=ACTOR,
    )
    if envelope.seq != 1:
        raise _Duplicate
    return Answer(200, body)


async def _extend(session: AsyncSession, assignment: Assignment, user_id: int, data: ExtensionGranted) -> Window:
    deadline: datetime = data.deadline
    cutoff: datetime = data.cutoff_at or deadline + (assignment.cutoff_at - assignment.deadline)
    extension = await session.scalar(
        select(Extension).where(Extension.assignment_id == assignment.id, Extension.user_id == user_id)
    )
    if extension is None:
        session.add(Extension(assignment_id=assignment.id, user_id=user_id, deadline=deadline, cutoff_at=cutoff))
    else:
        extension.deadline, extension.cutoff_at = deadline, cutoff
    await session.flush()
    return student_window(assignment.opens_at, assignment.deadline, assignment.cutoff_at, deadline, cutoff)


def _flash(notice: _Notice, dedupe_key: str) -> FlashSpec:
    return FlashSpec(
        text=notice.text,
        kind=notice.kind,
        link_url=notice.link_url,
        link_text=notice.link_text,
        # A notice from the admin office stays until it is dismissed.
        auto_hide_seconds=None,
        dedupe_key=dedupe_key,
    )


def _who(user: User) -> str:
    return f"user {user.id} ({user.email})"


async def _user(session: AsyncSession, who: _ForUser) -> User:
    if who.user_id is not None:
        user = await session.get(User, who.user_id)
        named = f"id {who.user_id}"
    else:
        user = await session.scalar(select(User).where(User.email == who.email))
        named = f"email {who.email!r}"
    if user is None or user.is_service:
        raise MessageRefused(422, f"handin has no user with {named}")
    return user


async def _course(session: AsyncSession, which: _ForCourse) -> Course:
    if which.course_id is not None:
        course = await session.get(Course, which.course_id)
        named = f"id {which.course_id}"
    else:
        course = await session.scalar(select(Course).where(Course.code == which.course_code))
        named = f"code {which.course_code!r}"
    if course is None:
        raise MessageRefused(422, f"handin has no course with {named}")
    return course


async def _assignment(session: AsyncSession, assignment_id: int) -> Assignment:
    assignment = await session.get(Assignment, assignment_id)
    if assignment is None:
        raise MessageRefused(422, f"handin has no assignment with id {assignment_id}")
    return assignment


async def _role(session: AsyncSession, user_id: int, course_id: int) -> str | None:
    role: str | None = await session.scalar(
        select(Enrolment.role).where(Enrolment.user_id == user_id, Enrolment.course_id == course_id)
    )
    return role
