"""Class chat on course.<id>: staff moderation (delete, hide, mute), staff announcements, read positions.

Members publish questions and answers through the router; what only staff may
do goes through here, so the staff check is made server-side.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field
from sqlalchemy import select

from api.deps import CurrentUser, RedisDep, SessionDep
from core import chat, keys
from core.access import STAFF, course_role
from core.clock import isoformat
from core.models import Enrolment

router = APIRouter(prefix="/api/courses", tags=["chat"])


async def chat_staff(course_id: int, user: CurrentUser, session: SessionDep) -> int:
    """The staff member's id if they teach this course; 404 for anyone else (no existence leak)."""
    if await course_role(session, user.id, course_id) != STAFF:
        raise HTTPException(404, "No such course.")
    return user.id


async def chat_member(course_id: int, user: CurrentUser, session: SessionDep) -> int:
    if await course_role(session, user.id, course_id) is None:
        raise HTTPException(404, "No such course.")
    return user.id


ChatStaff = Annotated[int, Depends(chat_staff)]
ChatMember = Annotated[int, Depends(chat_member)]


class AnnouncementIn(BaseModel):
    text: str = Field(max_length=chat.MAX_ANNOUNCEMENT_CHARS * 2)
    email: bool = False


class HiddenIn(BaseModel):
    hidden: bool = True


class MuteIn(BaseModel):
    user_id: int
    minutes: float = Field(ge=0, le=chat.MAX_MUTE_MINUTES)


class ReadIn(BaseModel):
    seq: int = Field(ge=0)


@router.delete("/{course_id}/chat/{seq}", status_code=204)
async def delete_chat_message(
    course_id: int, seq: int, user: CurrentUser, session: SessionDep, redis: RedisDep
) -> Response:
    """Redact message ``seq`` in the audit trail and tell open pages (``message.deleted``) to remove it."""
    if await course_role(session, user.id, course_id) != STAFF:
        raise HTTPException(404, "No such message.")  # the same answer as for one that does not exist
    # The same session, so on SQLite the change never waits for the lock the check holds.
    if not await chat.delete_message(session, redis, course_id, seq, user.id):
        raise HTTPException(404, "No such message.")
    return Response(status_code=204)


@router.post("/{course_id}/chat/{seq}/hide")
async def hide_chat_message(
    course_id: int, seq: int, body: HiddenIn, staff_id: ChatStaff, session: SessionDep, redis: RedisDep
) -> dict[str, Any]:
    """Hide a message from students (staff still see it and can show it again), or show it again."""
    if not await chat.set_hidden(session, redis, course_id, seq, staff_id, body.hidden):
        raise HTTPException(404, "No such message.")
    return {"seq": seq, "hidden": body.hidden}


@router.post("/{course_id}/announcements", status_code=201)
async def post_announcement(
    course_id: int, body: AnnouncementIn, staff_id: ChatStaff, session: SessionDep, redis: RedisDep
) -> dict[str, Any]:
    """A pinned announcement on the course page; with ``email``, also mailed to every enrolled student
    (a job on the receipt worker's queue, queued once the announcement is committed)."""
    try:
        seq = await chat.post_announcement(session, redis, course_id, staff_id, body.text, email=body.email)
    except chat.ChatRefused as refused:
        raise HTTPException(refused.status, refused.detail) from None
    if body.email:
        await chat.queue_announcement_mail(redis, course_id, seq)
    return {"seq": seq, "emailed": body.email}


@router.post("/{course_id}/mutes")
async def mute_student(
    course_id: int, body: MuteIn, staff_id: ChatStaff, session: SessionDep, redis: RedisDep
) -> dict[str, Any]:
    """Mute a student of the course for ``minutes`` (0 lifts the mute): the router refuses their messages."""
    try:
        until = await chat.mute(session, redis, course_id, body.user_id, staff_id, body.minutes)
    except chat.ChatRefused as refused:
        raise HTTPException(refused.status, refused.detail) from None
    return {"user_id": body.user_id, "until": isoformat(until), "muted": body.minutes > 0}


@router.post("/{course_id}/read")
async def mark_read(course_id: int, body: ReadIn, user_id: ChatMember, session: SessionDep) -> dict[str, Any]:
    """The page showed the chat up to ``seq``: later messages are unread."""
    last = await chat.mark_read(session, user_id, course_id, body.seq)
    await session.commit()
    return {"last_seq": last}


unread_router = APIRouter(prefix="/api/chat", tags=["chat"])


@unread_router.get("/unread")
async def unread(user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    """Unread class chat per course the user belongs to."""
    course_ids = list(await session.scalars(select(Enrolment.course_id).where(Enrolment.user_id == user.id)))
    # Seqs before counts: a page following each topic from its seq misses no message the counts left out.
    seqs = {course_id: await chat.topic_seq(session, keys.course_topic(course_id)) for course_id in course_ids}
    counts = await chat.unread_counts(session, user.id, course_ids)
    return {
        "courses": {
            str(course_id): {"unread": count, "topic": keys.course_topic(course_id), "seq": seqs[course_id]}
            for course_id, count in counts.items()
        },
        "total": sum(counts.values()),
    }
