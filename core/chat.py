"""Class chat on ``course.<id>``: what a message may be, how long it is kept, how staff remove one.

Members publish through the router (router/chat.py checks size and rate); each
message is an event of type ``message`` in the audit trail, so pages catch up
on what they missed. Staff delete a message (api/routes/chat.py): its text is
redacted in the audit trail and a ``message.deleted`` event tells open pages to
remove it. The maintenance worker prunes messages older than
``HANDIN_CHAT__RETENTION_DAYS`` (``PRUNED_TYPES``: announcements are kept).

The course page (api/routes/course_pages.py) builds on this:

- a message's ``kwargs.kind`` says what it is: ``question`` (a student asks),
  ``answer`` (``kwargs.reply_to`` is the question's seq; staff answering marks
  it answered) or a plain note;
- staff post an ``announcement`` through the api (a staff-only power checked
  server-side), pinned on the page, and with ``email`` also mailed to every
  enrolled student by the receipt worker (``queue_announcement_mail``);
- staff hide a message (``message.hidden``): its text moves to staff-only
  fields, so students no longer get it, live or on catch-up, and staff can
  show it again; delete is for good;
- staff mute a student for a while (``ChatMute``): the router refuses their
  PUBLISH with ``handin.error.muted``;
- each user's read position per course (``ChatRead``) gives the unread counts.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from arq.connections import ArqRedis
from redis.asyncio import Redis
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import keys
from core.access import STUDENT, course_role
from core.clock import isoformat, utcnow
from core.models import ChatMute, ChatRead, Event, TopicSeq
from core.queues import wake_workers
from core.unit_of_work import SessionSource, unit_of_work

MESSAGE_TYPE = "message"
DELETED_TYPE = "message.deleted"
HIDDEN_TYPE = "message.hidden"
ANNOUNCEMENT_TYPE = "announcement"
MUTED_TYPE = "chat.muted"
MUTED = "handin.error.muted"
MAX_ANNOUNCEMENT_CHARS = 4000
MAX_MUTE_MINUTES = 60 * 24 * 30
# What counts towards unread: things people wrote, not moderation notices.
READABLE_TYPES = (MESSAGE_TYPE, ANNOUNCEMENT_TYPE)
COURSE_TOPIC_PREFIX = "course."


def is_chat_topic(topic: str) -> bool:
    parsed = keys.parse_topic(topic)
    return parsed is not None and parsed[0] == "course"


def message_bytes(args: Any, kwargs: Any) -> int:
    """The size a message's payload takes in the audit trail and on every member's socket."""
    return len(json.dumps([args, kwargs], separators=(",", ":")).encode())


async def delete_message(source: SessionSource, redis: Redis, course_id: int, seq: int, staff_id: int) -> bool:
    """Redact chat message ``seq`` of a course and tell open pages; False when there is none."""
    topic = keys.course_topic(course_id)
    async with unit_of_work(source, redis) as work:
        row = await work.session.scalar(
            select(Event).where(Event.topic == topic, Event.seq == seq, Event.type == MESSAGE_TYPE).with_for_update()
        )
        if row is None:
            return False
        if (row.data or {}).get("deleted"):
            return True  # deleted already: nothing more to say
        # The audit trail keeps that a message was there and who wrote it, not what it said.
        row.data = {"author_id": (row.data or {}).get("author_id"), "deleted": True, "deleted_by": staff_id}
        await work.emit(topic, DELETED_TYPE, {"seq": seq}, actor="user", actor_id=staff_id)
    return True


# What the retention period prunes: members' messages and the moderation notices about them. Announcements
# are not pruned: they are the course's notices (exam dates, room changes), pinned for as long as the course
# runs, written by staff and carrying no student's words; a hidden one keeps its text in staff-only fields,
# so it stays hidden after its ``message.hidden`` notice is pruned, and staff can still show it again.
PRUNED_TYPES = (MESSAGE_TYPE, DELETED_TYPE, HIDDEN_TYPE)


async def prune_messages(session: AsyncSession, retention_days: float, now: datetime | None = None) -> int:
    """Delete class chat messages older than the retention period (not announcements); returns how many went."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    result = await session.execute(
        delete(Event).where(
            Event.type.in_(PRUNED_TYPES),
            Event.topic.startswith(COURSE_TOPIC_PREFIX),
            Event.at < cutoff,
        )
    )
    return int(getattr(result, "rowcount", 0) or 0)


class ChatRefused(Exception):
    """A moderation request that makes no sense; ``status`` is the HTTP answer."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


async def post_announcement(
    source: SessionSource, redis: Redis, course_id: int, staff_id: int, text: str, *, email: bool
) -> int:
    """Record and publish a pinned announcement on ``course.<id>``; returns its seq. The caller checked staff."""
    text = text.strip()
    if not text:
        raise ChatRefused(422, "Write the announcement first.")
    if len(text) > MAX_ANNOUNCEMENT_CHARS:
        raise ChatRefused(422, f"An announcement is at most {MAX_ANNOUNCEMENT_CHARS} characters.")
    async with unit_of_work(source, redis) as work:
        envelope = await work.emit(
            keys.course_topic(course_id),
            ANNOUNCEMENT_TYPE,
            {"author_id": staff_id, "text": text, "pinned": True, "emailed": email},
            actor="user",
            actor_id=staff_id,
        )
    return envelope.seq


async def queue_announcement_mail(arq: ArqRedis, course_id: int, seq: int, part: int = 0) -> None:
    """Queue (part of) the email of announcement ``seq`` to the course's students, on the receipt worker's queue.

    The job id names the announcement and part, so queueing one twice while it waits runs it once."""
    await arq.enqueue_job(
        keys.ANNOUNCEMENT_MAIL_FUNCTION,
        course_id,
        seq,
        part,
        _job_id=keys.announcement_mail_job_id(course_id, seq, part),
        _queue_name=keys.queue_name("receipt"),
    )
    await wake_workers(arq, "receipt")


# Hidden text moves to these keys, which core.audience never shows students.
_HIDDEN_KEYS = {"args": "hidden_args", "kwargs": "hidden_kwargs", "text": "hidden_text"}


async def set_hidden(
    source: SessionSource, redis: Redis, course_id: int, seq: int, staff_id: int, hidden: bool
) -> bool:
    """Hide (or show again) message or announcement ``seq``; False when there is none."""
    topic = keys.course_topic(course_id)
    async with unit_of_work(source, redis) as work:
        row = await work.session.scalar(
            select(Event)
            .where(Event.topic == topic, Event.seq == seq, Event.type.in_(READABLE_TYPES))
            .with_for_update()
        )
        if row is None or (row.data or {}).get("deleted"):
            return False
        data = dict(row.data or {})
        if bool(data.get("hidden")) == hidden:
            return True
        for shown, kept in _HIDDEN_KEYS.items():
            source_key, target_key = (shown, kept) if hidden else (kept, shown)
            if source_key in data:
                data[target_key] = data.pop(source_key)
        data["hidden"] = hidden
        row.data = data  # a new dict, so the JSON column is written
        await work.emit(topic, HIDDEN_TYPE, {"seq": seq, "hidden": hidden}, actor="user", actor_id=staff_id)
    return True


async def mute(
    source: SessionSource, redis: Redis, course_id: int, user_id: int, staff_id: int, minutes: float
) -> datetime:
    """Mute a student of the course for ``minutes`` (0 lifts it); returns until when."""
    if not 0 <= minutes <= MAX_MUTE_MINUTES:
        raise ChatRefused(422, f"Mute for between 0 and {MAX_MUTE_MINUTES} minutes.")
    until = utcnow() + timedelta(minutes=minutes)
    async with unit_of_work(source, redis) as work:
        session = work.session
        if await course_role(session, user_id, course_id) != STUDENT:
            raise ChatRefused(404, "No such student in this course.")
        row = await session.scalar(select(ChatMute).where(ChatMute.course_id == course_id, ChatMute.user_id == user_id))
        if row is None:
            session.add(ChatMute(course_id=course_id, user_id=user_id, until=until, muted_by=staff_id))
        else:
            row.until, row.muted_by = until, staff_id
        # Staff only: the course's staff topic. The student learns it when the router refuses a message.
        await work.emit(
            keys.course_staff_topic(course_id),
            MUTED_TYPE,
            {"user_id": user_id, "until": isoformat(until), "minutes": minutes},
            actor="user",
            actor_id=staff_id,
        )
    return until


async def muted_until(session: AsyncSession, course_id: int, user_id: int) -> datetime | None:
    """Until when this user may not post in the course's chat; None when they may."""
    until: datetime | None = await session.scalar(
        select(ChatMute.until).where(ChatMute.course_id == course_id, ChatMute.user_id == user_id)
    )
    return until if until is not None and until > utcnow() else None


async def mute_refusal(session: AsyncSession, topic: str, user_id: int) -> tuple[str, str] | None:
    """The router's answer to a muted student's PUBLISH on ``course.<id>``: (error URI, text), else None."""
    parsed = keys.parse_topic(topic)
    if parsed is None or parsed[0] != "course" or parsed[1] is None:
        return None
    until = await muted_until(session, parsed[1], user_id)
    return (MUTED, muted_text(until)) if until is not None else None


def muted_text(until: datetime) -> str:
    return (
        f"Staff have muted you in this course until {until.strftime('%Y-%m-%d %H:%M')} UTC: your message was not sent."
    )


async def topic_seq(session: AsyncSession, topic: str) -> int:
    seq: int | None = await session.scalar(select(TopicSeq.seq).where(TopicSeq.topic == topic))
    return int(seq or 0)


async def mark_read(session: AsyncSession, user_id: int, course_id: int, seq: int) -> int:
    """Move the user's read position forward to ``seq`` (never back, never past the topic); in the caller's
    transaction. Returns the position."""
    seq = min(seq, await topic_seq(session, keys.course_topic(course_id)))
    row = await session.scalar(select(ChatRead).where(ChatRead.user_id == user_id, ChatRead.course_id == course_id))
    if row is None:
        row = ChatRead(user_id=user_id, course_id=course_id, last_seq=max(0, seq))
        session.add(row)
    elif seq > row.last_seq:
        row.last_seq = seq
    return row.last_seq


async def unread_counts(session: AsyncSession, user_id: int, course_ids: list[int]) -> dict[int, int]:
    """Per course: messages and announcements by others after the user's read position, not deleted or hidden."""
    if not course_ids:
        return {}
    reads = dict(
        (
            await session.execute(
                select(ChatRead.course_id, ChatRead.last_seq).where(
                    ChatRead.user_id == user_id, ChatRead.course_id.in_(course_ids)
                )
            )
        )
        .tuples()
        .all()
    )
    counts: dict[int, int] = {}
    for course_id in course_ids:
        rows = await session.execute(
            select(Event.data).where(
                Event.topic == keys.course_topic(course_id),
                Event.seq > reads.get(course_id, 0),
                Event.type.in_(READABLE_TYPES),
                func.coalesce(Event.actor_id, 0) != user_id,
            )
        )
        counts[course_id] = sum(
            1 for (data,) in rows if not (data or {}).get("deleted") and not (data or {}).get("hidden")
        )
    return counts
