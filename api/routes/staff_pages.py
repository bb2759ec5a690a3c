"""HTML pages for staff: assignment setup and extensions, the live submissions table,
a submission's detail with grading, and the live dashboard.

Only staff of a course see its pages; everyone else gets the same 404 as for
something that does not exist.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from api.deps import OptionalUser, RedisDep, SessionDep, SessionsDep, StorageDep
from api.routes.pages import not_found, submission_context, to_login
from api.routes.views import course_role, render, submission_counts, topic_seq
from core import keys
from core.clock import isoformat, utcnow
from core.events import EventBatch
from core.grades import marking_progress
from core.models import Assignment, Course, Enrolment, Extension, Submission, User
from core.storage import Area

router = APIRouter(prefix="/staff", tags=["pages"], include_in_schema=False)

KINDS = ("pdf", "text", "image", "docx")
SIDE_BY_SIDE_BYTES = 20_000


async def staff_courses(session: SessionDep, user_id: int) -> list[Course]:
    rows = await session.scalars(
        select(Course)
        .join(Enrolment, Enrolment.course_id == Course.id)
        .where(Enrolment.user_id == user_id, Enrolment.role == "staff")
        .order_by(Course.code)
    )
    return list(rows)


@router.get("", response_class=HTMLResponse)
async def staff_home(request: Request, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    courses = await staff_courses(session, user.id)
    if not courses:
        return await not_found(request, session, user, "staff area")
    listing = []
    for course in courses:
        query = select(Assignment).where(Assignment.course_id == course.id).order_by(Assignment.deadline)
        assignments = list(await session.scalars(query))
        counts = await submission_counts(session, [a.id for a in assignments])
        listing.append({"course": course, "assignments": assignments, "counts": counts})
    return await render(request, session, user, "staff/home.html", listing=listing)


async def owned_assignment(session: SessionDep, user: User, assignment_id: int) -> Assignment | None:
    assignment = await session.get(Assignment, assignment_id)
    if assignment is None or await course_role(session, user.id, assignment.course_id) != "staff":
        return None
    return assignment


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


def read_assignment_form(form: Any) -> tuple[dict[str, Any], list[str]]:
    """Validated fields for an Assignment, and every problem in words a person understands."""
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
    try:
        max_mb = float(form.get("max_mb", ""))
        if not 0 < max_mb <= 2048:
            raise ValueError
        fields["max_bytes"] = int(max_mb * 1024 * 1024)
    except ValueError:
        errors.append("Maximum size: a number of megabytes between 0 and 2048.")
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
async def new_assignment(request: Request, course_id: int, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    course = await session.get(Course, course_id)
    if course is None or await course_role(session, user.id, course_id) != "staff":
        return await not_found(request, session, user, "course")
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
    request: Request, course_id: int, user: OptionalUser, session: SessionDep, sessions: SessionsDep, redis: RedisDep
) -> Response:
    if user is None:
        return to_login(request)
    course = await session.get(Course, course_id)
    if course is None or await course_role(session, user.id, course_id) != "staff":
        return await not_found(request, session, user, "course")
    form = await request.form()
    fields, errors = read_assignment_form(form)
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
    async with sessions() as db, db.begin():
        assignment = Assignment(course_id=course_id, **fields)
        db.add(assignment)
        await db.flush()
        batch = EventBatch(db)
        await batch.emit(
            keys.course_topic(course_id),
            "assignment.created",
            {"assignment_id": assignment.id, "title": assignment.title},
            actor=f"staff:{user.id}",
            actor_id=user.id,
        )
    await batch.publish(redis)
    return RedirectResponse(f"/staff/assignments/{assignment.id}", status_code=303)


@router.get("/assignments/{assignment_id}/edit", response_class=HTMLResponse)
async def edit_assignment(request: Request, assignment_id: int, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    assignment = await owned_assignment(session, user, assignment_id)
    if assignment is None:
        return await not_found(request, session, user, "assignment")
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
    request: Request,
    assignment_id: int,
    user: OptionalUser,
    session: SessionDep,
    sessions: SessionsDep,
    redis: RedisDep,
) -> Response:
    if user is None:
        return to_login(request)
    assignment = await owned_assignment(session, user, assignment_id)
    if assignment is None:
        return await not_found(request, session, user, "assignment")
    form = await request.form()
    fields, errors = read_assignment_form(form)
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
    async with sessions() as db, db.begin():
        row = await db.get(Assignment, assignment_id)
        assert row is not None
        for name, value in fields.items():
            setattr(row, name, value)
        batch = EventBatch(db)
        # Open student pages move their countdowns at once.
        await batch.emit(
            keys.assignment_topic(assignment_id),
            "assignment.updated",
            {
                "assignment_id": assignment_id,
                "title": row.title,
                "opens_at": isoformat(row.opens_at),
                "deadline": isoformat(row.deadline),
                "cutoff_at": isoformat(row.cutoff_at),
                "max_attempts": row.max_attempts,
                "late_policy": row.late_policy,
            },
            actor=f"staff:{user.id}",
            actor_id=user.id,
        )
    await batch.publish(redis)
    return RedirectResponse(f"/staff/assignments/{assignment_id}?saved=1", status_code=303)


@router.post("/assignments/{assignment_id}/extensions", response_class=HTMLResponse)
async def save_extension(
    request: Request,
    assignment_id: int,
    user: OptionalUser,
    session: SessionDep,
    sessions: SessionsDep,
    redis: RedisDep,
) -> Response:
    if user is None:
        return to_login(request)
    assignment = await owned_assignment(session, user, assignment_id)
    if assignment is None:
        return await not_found(request, session, user, "assignment")
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
    async with sessions() as db, db.begin():
        extension = await db.scalar(
            select(Extension).where(Extension.assignment_id == assignment_id, Extension.user_id == student_id)
        )
        if extension is None:
            extension = Extension(assignment_id=assignment_id, user_id=student_id, deadline=deadline, cutoff_at=cutoff)
            db.add(extension)
        extension.deadline, extension.cutoff_at = deadline, cutoff
        batch = EventBatch(db)
        await batch.emit(
            keys.user_topic(student_id),
            "extension.updated",
            {"assignment_id": assignment_id, "deadline": isoformat(deadline), "cutoff_at": isoformat(cutoff)},
            actor=f"staff:{user.id}",
            actor_id=user.id,
        )
    await batch.publish(redis)
    return RedirectResponse(f"/staff/assignments/{assignment_id}/edit#extensions", status_code=303)


@router.post("/assignments/{assignment_id}/extensions/{extension_id}/delete", response_class=HTMLResponse)
async def delete_extension(
    request: Request,
    assignment_id: int,
    extension_id: int,
    user: OptionalUser,
    session: SessionDep,
    sessions: SessionsDep,
    redis: RedisDep,
) -> Response:
    if user is None:
        return to_login(request)
    assignment = await owned_assignment(session, user, assignment_id)
    if assignment is None:
        return await not_found(request, session, user, "assignment")
    async with sessions() as db, db.begin():
        extension = await db.get(Extension, extension_id)
        batch = EventBatch(db)
        if extension is not None and extension.assignment_id == assignment_id:
            await batch.emit(
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
            await db.delete(extension)
    await batch.publish(redis)
    return RedirectResponse(f"/staff/assignments/{assignment_id}/edit#extensions", status_code=303)


# Live pages ---------------------------------------------------------------------------------------


@router.get("/assignments/{assignment_id}", response_class=HTMLResponse)
async def assignment_table(request: Request, assignment_id: int, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    assignment = await owned_assignment(session, user, assignment_id)
    if assignment is None:
        return await not_found(request, session, user, "assignment")
    topic = keys.assignment_topic(assignment_id)
    return await render(
        request,
        session,
        user,
        "staff/assignment.html",
        assignment=assignment,
        course=await session.get(Course, assignment.course_id),
        topic=topic,
        seq=await topic_seq(session, topic),
        progress=await marking_progress(session, assignment_id),
        saved=request.query_params.get("saved") == "1",
    )


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
async def submission_detail(
    request: Request, submission_id: int, user: OptionalUser, session: SessionDep, storage: StorageDep
) -> Response:
    if user is None:
        return to_login(request)
    submission = await session.get(Submission, submission_id)
    assignment = await owned_assignment(session, user, submission.assignment_id) if submission else None
    if submission is None or assignment is None:
        return await not_found(request, session, user, "submission")
    context = await submission_context(session, submission)
    student = await session.get(User, submission.user_id)
    similarity = next((s for s in context["steps"] if s["name"] == "similarity"), None)
    matches = []
    for match in ((similarity or {}).get("result") or {}).get("matches", [])[:5]:
        other = await session.get(Submission, match.get("submission_id"))
        if other is None or other.assignment_id != assignment.id:
            continue
        owner = await session.get(User, other.user_id)
        matches.append(
            {
                "match": match,
                "other": other,
                "owner": owner,
                "mine_text": await text_excerpt(storage, submission),
                "other_text": await text_excerpt(storage, other),
            }
        )
    return await render(
        request,
        session,
        user,
        "staff/submission.html",
        **context,
        student=student,
        matches=matches,
        progress=await marking_progress(session, assignment.id),
        assignment_seq=await topic_seq(session, keys.assignment_topic(assignment.id)),
    )


async def text_excerpt(storage: Any, submission: Submission) -> str | None:
    """The start of a stored text file for side-by-side reading; None for other kinds."""
    if submission.kind != "text" or submission.status == "quarantined":
        return None
    try:
        data = await storage.read_prefix(Area.store, submission.storage_key, SIDE_BY_SIDE_BYTES)
    except Exception:  # not stored yet, or gone: the page still works without it
        return None
    return bytes(data).decode("utf-8", errors="replace")


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    courses = await staff_courses(session, user.id)
    if not courses:
        return await not_found(request, session, user, "dashboard")
    return await render(
        request,
        session,
        user,
        "staff/dashboard.html",
        topic=keys.STAFF_DASHBOARD_TOPIC,
        seq=await topic_seq(session, keys.STAFF_DASHBOARD_TOPIC),
    )
