"""HTML pages for staff: assignment setup and extensions, the live submissions table,
a submission's detail with grading, and the live dashboard.

Only staff of a course see its pages; everyone else gets the same 404 as for
something that does not exist. Who may see what is checked by the dependencies
in ``api.deps`` (``PageUser``, ``StaffCourse``, ``StaffAssignment``,
``StaffSubmission``); a form that saves writes through the request's own
session in one unit of work, so on SQLite it never waits for its own lock.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from api.deps import (
    PageNotFound,
    PageUser,
    RedisDep,
    SessionDep,
    StaffAssignment,
    StaffCourse,
    StaffSubmission,
    StorageDep,
)
from api.routes.pages import submission_context
from api.routes.views import course_role, render, submission_counts, topic_seq
from core import keys
from core.audience import Audience
from core.clock import isoformat, utcnow
from core.grades import marking_progress
from core.models import Assignment, Course, Enrolment, Extension, Submission, User
from core.similarity.passages import decode_kept_text, excerpt, text_key
from core.storage import Area
from core.unit_of_work import unit_of_work

router = APIRouter(prefix="/staff", tags=["pages"], include_in_schema=False)

KINDS = ("pdf", "text", "image", "docx")
# The similarity step keeps at most 2 million characters of text (core.similarity.text).
MAX_KEPT_TEXT_BYTES = 8_000_000


async def staff_courses(session: SessionDep, user_id: int) -> list[Course]:
    rows = await session.scalars(
        select(Course)
        .join(Enrolment, Enrolment.course_id == Course.id)
        .where(Enrolment.user_id == user_id, Enrolment.role == "staff")
        .order_by(Course.code)
    )
    return list(rows)


@router.get("", response_class=HTMLResponse)
async def staff_home(request: Request, user: PageUser, session: SessionDep) -> Response:
    courses = await staff_courses(session, user.id)
    if not courses:
        raise PageNotFound("staff area")
    listing = []
    for course in courses:
        query = select(Assignment).where(Assignment.course_id == course.id).order_by(Assignment.deadline)
        assignments = list(await session.scalars(query))
        counts = await submission_counts(session, [a.id for a in assignments])
        listing.append({"course": course, "assignments": assignments, "counts": counts})
    return await render(request, session, user, "staff/home.html", listing=listing)


# Assignment setup --------------------------------------------------------------------------------


def parse_local(value: str, offset_minutes: int) -> datetime:
    """A datetime-local value in the browser's zone (JS's getTimezoneOffset, minutes behind UTC)."""
    naive = datetime.fromisoformat(value)
    return (naive + timedelta(minutes=offset_minutes)).replace(tzinfo=UTC)


def form_values(assignment: Assignment | None) -> dict[str, Any]:
    if assignment is None:
        now = utcnow().replace(second=0, microsecond=0)
        return {
            "title": "",
            "description": "",
            "late_policy": "",
            "opens_at": isoformat(now),
            "deadline": isoformat(now + timedelta(days=7)),
            "cutoff_at": isoformat(now + timedelta(days=8)),
            "max_mb": 20,
            "accepted_types": ["pdf", "text", "docx"],
            "max_attempts": 3,
        }
    return {
        "title": assignment.title,
        "description": assignment.description,
        "late_policy": assignment.late_policy,
        "opens_at": isoformat(assignment.opens_at),
        "deadline": isoformat(assignment.deadline),
        "cutoff_at": isoformat(assignment.cutoff_at),
        "max_mb": round(assignment.max_bytes / 1024 / 1024, 2),
        "accepted_types": list(assignment.accepted_types),
        "max_attempts": assignment.max_attempts,
    }


def read_assignment_form(form: Any, cap_bytes: int) -> tuple[dict[str, Any], list[str]]:
    """Validated fields for an Assignment, and every problem in words a person understands.

    The size limit may not exceed ``cap_bytes`` (HANDIN_MAX_UPLOAD_BYTES): intake never accepts more, so a
    larger limit would promise students what the server then refuses."""
    errors: list[str] = []
    fields: dict[str, Any] = {
        "title": str(form.get("title", "")).strip()[:200],
        "description": str(form.get("description", "")).strip(),
        "late_policy": str(form.get("late_policy", "")).strip(),
        "accepted_types": [kind for kind in form.getlist("accepted_types") if kind in KINDS],
    }
    if not fields["title"]:
        errors.append("Give the assignment a title.")
    try:
        offset = int(form.get("tz_offset") or 0)
    except ValueError:
        offset = 0
    for name, label in (("opens_at", "Opens"), ("deadline", "Deadline"), ("cutoff_at", "Cut-off")):
        try:
            fields[name] = parse_local(str(form.get(name, "")), offset)
        except ValueError:
            errors.append(f"{label}: enter a date and time.")
    if not errors:
        if fields["deadline"] <= fields["opens_at"]:
            errors.append("The deadline must be after the opening time.")
        if fields["cutoff_at"] < fields["deadline"]:
            errors.append("The cut-off cannot be before the deadline.")
    cap_mb = cap_bytes / 1024 / 1024
    try:
        max_mb = float(form.get("max_mb", ""))
        if not 0 < max_mb <= 2048:
            raise ValueError
        fields["max_bytes"] = int(max_mb * 1024 * 1024)
        if fields["max_bytes"] > cap_bytes:
            errors.append(
                f"Maximum size: this server accepts at most {cap_mb:g} MB per file; enter {cap_mb:g} or less."
            )
    except ValueError:
        errors.append(f"Maximum size: a number of megabytes above 0 and at most {cap_mb:g}.")
    try:
        fields["max_attempts"] = int(form.get("max_attempts", ""))
        if not 1 <= fields["max_attempts"] <= 100:
            raise ValueError
    except ValueError:
        errors.append("Attempts: a whole number from 1 to 100.")
    if not fields["accepted_types"]:
        errors.append("Accept at least one file type.")
    return fields, errors


def echo_form(form: Any) -> dict[str, Any]:
    """Put what was typed back in the form after a refusal."""
    values = {key: form.get(key, "") for key in ("title", "description", "late_policy", "max_mb", "max_attempts")}
    values["accepted_types"] = form.getlist("accepted_types")
    for name in ("opens_at", "deadline", "cutoff_at"):
        # The page's script sends UTC; hand it back as UTC so the script shows it in local time again.
        try:
            values[name] = isoformat(parse_local(str(form.get(name, "")), 0))
        except ValueError:
            values[name] = ""
    return values


@router.get("/courses/{course_id}/assignments/new", response_class=HTMLResponse)
async def new_assignment(request: Request, course: StaffCourse, user: PageUser, session: SessionDep) -> Response:
    return await render(
        request,
        session,
        user,
        "staff/assignment_form.html",
        course=course,
        assignment=None,
        values=form_values(None),
        errors=[],
        kinds=KINDS,
    )


@router.post("/courses/{course_id}/assignments/new", response_class=HTMLResponse)
async def create_assignment(
    request: Request, course: StaffCourse, user: PageUser, session: SessionDep, redis: RedisDep
) -> Response:
    form = await request.form()
    fields, errors = read_assignment_form(form, request.app.state.settings.max_upload_bytes)
    if errors:
        return await render(
            request,
            session,
            user,
            "staff/assignment_form.html",
            status_code=422,
            course=course,
            assignment=None,
            values=echo_form(form),
            errors=errors,
            kinds=KINDS,
        )
    async with unit_of_work(session, redis) as work:
        assignment = Assignment(course_id=course.id, **fields)
        session.add(assignment)
        await session.flush()
        await work.emit(
            keys.course_topic(course.id),
            "assignment.created",
            {"assignment_id": assignment.id, "title": assignment.title},
            actor=f"staff:{user.id}",
            actor_id=user.id,
        )
    return RedirectResponse(f"/staff/assignments/{assignment.id}", status_code=303)


@router.get("/assignments/{assignment_id}/edit", response_class=HTMLResponse)
async def edit_assignment(
    request: Request, assignment: StaffAssignment, user: PageUser, session: SessionDep
) -> Response:
    return await render(
        request,
        session,
        user,
        "staff/assignment_form.html",
        course=await session.get(Course, assignment.course_id),
        assignment=assignment,
        values=form_values(assignment),
        errors=[],
        kinds=KINDS,
        **await extension_context(session, assignment),
    )


async def extension_context(session: SessionDep, assignment: Assignment) -> dict[str, Any]:
    students = list(
        await session.scalars(
            select(User)
            .join(Enrolment, Enrolment.user_id == User.id)
            .where(Enrolment.course_id == assignment.course_id, Enrolment.role == "student")
            .order_by(User.name)
        )
    )
    extensions = list(
        await session.scalars(select(Extension).where(Extension.assignment_id == assignment.id).order_by(Extension.id))
    )
    names = {student.id: student for student in students}
    return {"students": students, "extensions": [(ext, names.get(ext.user_id)) for ext in extensions]}


@router.post("/assignments/{assignment_id}/edit", response_class=HTMLResponse)
async def update_assignment(
    request: Request, assignment: StaffAssignment, user: PageUser, session: SessionDep, redis: RedisDep
) -> Response:
    form = await request.form()
    fields, errors = read_assignment_form(form, request.app.state.settings.max_upload_bytes)
    if errors:
        return await render(
            request,
            session,
            user,
            "staff/assignment_form.html",
            status_code=422,
            course=await session.get(Course, assignment.course_id),
            assignment=assignment,
            values=echo_form(form),
            errors=errors,
            kinds=KINDS,
            **await extension_context(session, assignment),
        )
    async with unit_of_work(session, redis) as work:
        for name, value in fields.items():
            setattr(assignment, name, value)
        # Open student pages move their countdowns at once.
        await work.emit(
            keys.assignment_topic(assignment.id),
            "assignment.updated",
            {
                "assignment_id": assignment.id,
                "title": assignment.title,
                "opens_at": isoformat(assignment.opens_at),
                "deadline": isoformat(assignment.deadline),
                "cutoff_at": isoformat(assignment.cutoff_at),
                "max_attempts": assignment.max_attempts,
                "late_policy": assignment.late_policy,
            },
            actor=f"staff:{user.id}",
            actor_id=user.id,
        )
    return RedirectResponse(f"/staff/assignments/{assignment.id}?saved=1", status_code=303)


@router.post("/assignments/{assignment_id}/extensions", response_class=HTMLResponse)
async def save_extension(
    request: Request, assignment: StaffAssignment, user: PageUser, session: SessionDep, redis: RedisDep
) -> Response:
    form = await request.form()
    errors: list[str] = []
    try:
        student_id = int(str(form.get("user_id", "")))
    except ValueError:
        student_id = 0
    if await course_role(session, student_id, assignment.course_id) != "student":
        errors.append("Pick a student of this course.")
    try:
        offset = int(str(form.get("tz_offset") or 0))
        deadline = parse_local(str(form.get("deadline", "")), offset)
        cutoff = parse_local(str(form.get("cutoff_at", "")), offset)
        if cutoff < deadline:
            errors.append("The extended cut-off cannot be before the extended deadline.")
    except ValueError:
        errors.append("Enter the extended deadline and cut-off.")
    if errors:
        return await render(
            request,
            session,
            user,
            "staff/assignment_form.html",
            status_code=422,
            course=await session.get(Course, assignment.course_id),
            assignment=assignment,
            values=form_values(assignment),
            errors=errors,
            kinds=KINDS,
            **await extension_context(session, assignment),
        )
    assignment_id = assignment.id
    async with unit_of_work(session, redis) as work:
        extension = await session.scalar(
            select(Extension).where(Extension.assignment_id == assignment_id, Extension.user_id == student_id)
        )
        if extension is None:
            extension = Extension(assignment_id=assignment_id, user_id=student_id, deadline=deadline, cutoff_at=cutoff)
            session.add(extension)
        extension.deadline, extension.cutoff_at = deadline, cutoff
        await work.emit(
            keys.user_topic(student_id),
            "extension.updated",
            {"assignment_id": assignment_id, "deadline": isoformat(deadline), "cutoff_at": isoformat(cutoff)},
            actor=f"staff:{user.id}",
            actor_id=user.id,
        )
    return RedirectResponse(f"/staff/assignments/{assignment_id}/edit#extensions", status_code=303)


@router.post("/assignments/{assignment_id}/extensions/{extension_id}/delete", response_class=HTMLResponse)
async def delete_extension(
    assignment: StaffAssignment, extension_id: int, user: PageUser, session: SessionDep, redis: RedisDep
) -> Response:
    assignment_id = assignment.id
    async with unit_of_work(session, redis) as work:
        extension = await session.get(Extension, extension_id)
        if extension is not None and extension.assignment_id == assignment_id:
            await work.emit(
                keys.user_topic(extension.user_id),
                "extension.updated",
                {
                    "assignment_id": assignment_id,
                    "deadline": isoformat(assignment.deadline),
                    "cutoff_at": isoformat(assignment.cutoff_at),
                },
                actor=f"staff:{user.id}",
                actor_id=user.id,
            )
            await session.delete(extension)
    return RedirectResponse(f"/staff/assignments/{assignment_id}/edit#extensions", status_code=303)


# Live pages ---------------------------------------------------------------------------------------


@router.get("/assignments/{assignment_id}", response_class=HTMLResponse)
async def assignment_table(
    request: Request, assignment: StaffAssignment, user: PageUser, session: SessionDep
) -> Response:
    topic = keys.assignment_topic(assignment.id)
    return await render(
        request,
        session,
        user,
        "staff/assignment.html",
        assignment=assignment,
        course=await session.get(Course, assignment.course_id),
        topic=topic,
        seq=await topic_seq(session, topic),
        staff_topic=keys.course_staff_topic(assignment.course_id),
        staff_seq=await topic_seq(session, keys.course_staff_topic(assignment.course_id)),
        progress=await marking_progress(session, assignment.id),
        saved=request.query_params.get("saved") == "1",
    )


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
async def submission_detail(
    request: Request,
    submission: StaffSubmission,
    user: PageUser,
    session: SessionDep,
    storage: StorageDep,
    match: int | None = None,
) -> Response:
    context = await submission_context(session, submission, Audience.STAFF)
    student = await session.get(User, submission.user_id)
    similarity = next((s for s in context["steps"] if s["step"] == "similarity"), None)
    matches = []
    for found in ((similarity or {}).get("result") or {}).get("matches", [])[:5]:
        other = await session.get(Submission, found.get("submission_id"))
        if other is None or other.assignment_id != submission.assignment_id:
            continue
        matches.append({"match": found, "other": other, "owner": await session.get(User, other.user_id)})
    # One match's passages at a time (?match=<its submission id>), the strongest first.
    chosen = next((m for m in matches if m["other"].id == match), matches[0] if matches else None)
    if chosen is not None:
        chosen["passages"] = await passage_rows(storage, submission, chosen["other"], chosen["match"])
    return await render(
        request,
        session,
        user,
        "staff/submission.html",
        **context,
        student=student,
        matches=matches,
        chosen=chosen,
        progress=await marking_progress(session, submission.assignment_id),
        assignment_seq=await topic_seq(session, keys.assignment_topic(submission.assignment_id)),
    )


async def passage_rows(
    storage: Any, mine: Submission, other: Submission, match: dict[str, Any]
) -> list[dict[str, Any]]:
    """Each matched passage of both texts with its context, in this submission's order. A match
    recorded before passages were paired has only this submission's ``spans``: the other side is None."""
    mine_text, other_text = await kept_text(storage, mine), await kept_text(storage, other)
    if mine_text is None:
        return []
    if "passages" in match and other_text is not None:
        return [
            {"mine": excerpt(mine_text, a, b), "other": excerpt(other_text, c, d)} for a, b, c, d in match["passages"]
        ]
    return [{"mine": excerpt(mine_text, a, b), "other": None} for a, b in match.get("spans", [])]


async def kept_text(storage: Any, submission: Submission) -> str | None:
    """The text the similarity step extracted (kept beside the file); a plain-text file's own text
    for a submission checked before texts were kept; None otherwise. The api reads no PDF or DOCX."""
    if submission.status == "quarantined":
        return None
    for key, kind in ((text_key(submission.storage_key), None), (submission.storage_key, "text")):
        if kind is not None and submission.kind != kind:
            continue
        try:
            data = await storage.read_prefix(Area.store, key, MAX_KEPT_TEXT_BYTES)
        except Exception:  # not stored yet, or gone: the page still works without it
            continue
        return decode_kept_text(bytes(data)) if kind is None else bytes(data).decode("utf-8", errors="replace")
    return None


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, user: PageUser, session: SessionDep) -> Response:
    courses = await staff_courses(session, user.id)
    if not courses:
        raise PageNotFound("dashboard")
    return await render(
        request,
        session,
        user,
        "staff/dashboard.html",
        # The staff topic of every course this user teaches, and the fleet: each rendered at its seq.
        topics=[
            {"topic": topic, "seq": await topic_seq(session, topic)}
            for topic in [*(keys.course_staff_topic(course.id) for course in courses), keys.FLEET_TOPIC]
        ],
    )
