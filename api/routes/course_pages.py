"""The course page (``/courses/{id}``, for its members): class messaging.

Staff post pinned announcements, students ask questions, staff answer, hide,
delete and mute. The page is rendered with who is in the course; its script
(static/js/course.js) follows ``course.<id>`` from seq 0, so the history comes
from the audit trail through the catch-up endpoint, and a reconnect continues
from the last seq shown: no gap, no duplicate.
"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from sqlalchemy import select

from api.deps import PageNotFound, PageUser, SessionDep, SettingsDep
from api.routes.views import render
from core import chat, keys
from core.access import STAFF
from core.models import Course, Enrolment, User

router = APIRouter(tags=["pages"], include_in_schema=False)


@router.get("/courses/{course_id}", response_class=HTMLResponse)
async def course_page(
    request: Request, course_id: int, user: PageUser, session: SessionDep, settings: SettingsDep
) -> Response:
    course = await session.get(Course, course_id)
    members = (
        await session.execute(
            select(User.id, User.name, Enrolment.role)
            .join(Enrolment, Enrolment.user_id == User.id)
            .where(Enrolment.course_id == course_id)
            .order_by(User.name)
        )
    ).all()
    role = next((member_role for member_id, _, member_role in members if member_id == user.id), None)
    if course is None or role is None:
        raise PageNotFound("course")
    topic = keys.course_topic(course_id)
    # Opening the page reads the chat: later messages count as unread until the page shows them.
    await chat.mark_read(session, user.id, course_id, await chat.topic_seq(session, topic))
    muted = await chat.muted_until(session, course_id, user.id)
    await session.commit()
    return await render(
        request,
        session,
        user,
        "course.html",
        course=course,
        role=role,
        is_course_staff=role == STAFF,
        # Names for the messages' authors: course members see who wrote, as in any course forum.
        people={
            str(member_id): {"name": name, "staff": member_role == STAFF} for member_id, name, member_role in members
        },
        students=[(member_id, name) for member_id, name, member_role in members if member_role != STAFF],
        topic=topic,
        muted_until=muted,
        max_message_bytes=settings.chat.max_message_bytes,
        max_announcement_chars=chat.MAX_ANNOUNCEMENT_CHARS,
    )
