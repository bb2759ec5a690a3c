"""What the HTML pages share: the template engine, the page context and read-side queries.

Pages are rendered from the database; each live page also gets the current
``seq`` of the topics it will follow, so its script can subscribe and fetch
``after=seq`` without a gap.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from core import keys
from core.clock import isoformat
from core.deadlines import Window, student_window
from core.flash import flash_as_dict, pending_flashes
from core.models import Assignment, Enrolment, Extension, Submission, TopicSeq, User

TEMPLATES_DIR = Path(__file__).resolve().parent.parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def _iso(moment: datetime | None) -> str:
    return isoformat(moment) if moment is not None else ""


def _plain_time(moment: datetime | None) -> str:
    """Server-side text for a time; the page's script rewrites it in the reader's zone."""
    return moment.strftime("%a %d %b %Y, %H:%M UTC") if moment is not None else ""


def _size(count: int | None) -> str:
    value = float(count or 0)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{int(value)} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return str(count)


templates.env.filters["iso"] = _iso
templates.env.filters["plain_time"] = _plain_time
templates.env.filters["size"] = _size
templates.env.filters["tojson_attr"] = lambda value: json.dumps(value, separators=(",", ":"))


async def topic_seq(session: AsyncSession, topic: str) -> int:
    return int(await session.scalar(select(TopicSeq.seq).where(TopicSeq.topic == topic)) or 0)


async def is_staff_anywhere(session: AsyncSession, user_id: int) -> bool:
    found = await session.scalar(
        select(Enrolment.id).where(Enrolment.user_id == user_id, Enrolment.role == "staff").limit(1)
    )
    return found is not None


async def render(
    request: Request, session: AsyncSession, user: User | None, template: str, status_code: int = 200, **context: Any
) -> HTMLResponse:
    """Render a page with what every page needs: who is logged in, unconfirmed flashes, live topics."""
    base: dict[str, Any] = {"user": user, "is_staff": False, "flashes": [], "user_topic": None, "user_seq": 0}
    if user is not None:
        base["is_staff"] = await is_staff_anywhere(session, user.id)
        base["user_topic"] = keys.user_topic(user.id)
        # Seq first, then rows: anything after the seq is replayed, never lost.
        base["user_seq"] = await topic_seq(session, base["user_topic"])
        base["flashes"] = [flash_as_dict(flash) for flash in await pending_flashes(session, user.id)]
    base.update(context)
    response = templates.TemplateResponse(request, template, base, status_code=status_code)
    # A page is a snapshot of the database at one seq: never serve it from cache.
    response.headers["Cache-Control"] = "no-store"
    return response


async def window_for(session: AsyncSession, assignment: Assignment, user_id: int) -> Window:
    """The student's dates by the rule intake applies too (core.deadlines)."""
    extension = await session.scalar(
        select(Extension).where(Extension.assignment_id == assignment.id, Extension.user_id == user_id)
    )
    return student_window(
        assignment.opens_at,
        assignment.deadline,
        assignment.cutoff_at,
        extension.deadline if extension is not None else None,
        extension.cutoff_at if extension is not None else None,
    )


async def attempts_of(session: AsyncSession, assignment_id: int, user_id: int) -> list[Submission]:
    rows = await session.scalars(
        select(Submission)
        .where(Submission.assignment_id == assignment_id, Submission.user_id == user_id)
        .order_by(Submission.attempt.desc())
    )
    return list(rows)


async def course_role(session: AsyncSession, user_id: int, course_id: int) -> str | None:
    return await session.scalar(
        select(Enrolment.role).where(Enrolment.user_id == user_id, Enrolment.course_id == course_id)
    )


async def submission_counts(session: AsyncSession, assignment_ids: list[int]) -> dict[int, int]:
    if not assignment_ids:
        return {}
    rows = await session.execute(
        select(Submission.assignment_id, func.count(func.distinct(Submission.user_id)))
        .where(Submission.assignment_id.in_(assignment_ids))
        .group_by(Submission.assignment_id)
    )
    return {int(a): int(n) for a, n in rows.all()}
