"""HTML pages for students (and the pages everyone shares): login, courses, assignment, submission.

Staff pages live in ``staff_pages.py``. Every page is rendered from the
database and then kept current by its script over the WebSocket router.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from api.deps import OptionalUser, SessionDep
from api.routes.views import attempts_of, course_role, render, topic_seq, window_for
from core import keys
from core.access import can_view_submission
from core.models import Assignment, Course, Enrolment, Submission, SubmissionStep, User
from core.pipeline import STEPS, STEPS_BY_NAME

router = APIRouter(tags=["pages"], include_in_schema=False)


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={target}", status_code=303)


async def not_found(request: Request, session: SessionDep, user: User | None, what: str) -> HTMLResponse:
    """One answer for "missing" and "not yours", so nobody learns what exists."""
    return await render(request, session, user, "not_found.html", status_code=404, what=what)


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    return RedirectResponse("/courses", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, user: OptionalUser, session: SessionDep, next: str = "/courses") -> Response:
    # Only same-site paths, so the login form cannot be used to bounce users elsewhere.
    safe_next = next if next.startswith("/") and not next.startswith("//") else "/courses"
    return await render(request, session, None, "login.html", next=safe_next, already=user)


@router.get("/courses", response_class=HTMLResponse)
async def courses_page(request: Request, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    enrolments = list(
        await session.scalars(select(Enrolment).where(Enrolment.user_id == user.id).order_by(Enrolment.course_id))
    )
    courses: list[dict[str, Any]] = []
    for enrolment in enrolments:
        course = await session.get(Course, enrolment.course_id)
        if course is None:
            continue
        assignments = list(
            await session.scalars(
                select(Assignment).where(Assignment.course_id == course.id).order_by(Assignment.deadline)
            )
        )
        rows = []
        for assignment in assignments:
            attempts = await attempts_of(session, assignment.id, user.id)
            rows.append(
                {
                    "assignment": assignment,
                    "window": await window_for(session, assignment, user.id),
                    "attempts": attempts,
                    "latest": attempts[0] if attempts else None,
                }
            )
        courses.append({"course": course, "role": enrolment.role, "assignments": rows})
    return await render(request, session, user, "courses.html", courses=courses)


@router.get("/assignments/{assignment_id}", response_class=HTMLResponse)
async def assignment_page(request: Request, assignment_id: int, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    assignment = await session.get(Assignment, assignment_id)
    role = await course_role(session, user.id, assignment.course_id) if assignment is not None else None
    if assignment is None or role is None:
        return await not_found(request, session, user, "assignment")
    if role == "staff":
        return RedirectResponse(f"/staff/assignments/{assignment_id}", status_code=303)
    course = await session.get(Course, assignment.course_id)
    topic = keys.assignment_topic(assignment.id)
    seq = await topic_seq(session, topic)
    attempts = await attempts_of(session, assignment.id, user.id)
    window = await window_for(session, assignment, user.id)
    return await render(
        request,
        session,
        user,
        "assignment.html",
        assignment=assignment,
        course=course,
        window=window,
        attempts=attempts,
        attempts_left=max(0, assignment.max_attempts - len(attempts)),
        topic=topic,
        seq=seq,
    )


def step_view(row: SubmissionStep) -> dict[str, Any]:
    step = STEPS_BY_NAME.get(row.step)
    return {
        "name": row.step,
        "label": step.label if step else row.step,
        "state": row.state,
        "attempts": row.attempts,
        "started_at": row.started_at,
        "finished_at": row.finished_at,
        "result": row.result or {},
        "error": row.error,
    }


async def submission_context(session: SessionDep, submission: Submission) -> dict[str, Any]:
    """What the student's and the staff's submission pages both show."""
    topic = keys.submission_topic(submission.id)
    seq = await topic_seq(session, topic)  # before the rows: later changes are replayed, none lost
    await session.refresh(submission)
    rows = list(await session.scalars(select(SubmissionStep).where(SubmissionStep.submission_id == submission.id)))
    order = {step.name: index for index, step in enumerate(STEPS)}
    steps = sorted((step_view(row) for row in rows), key=lambda view: order.get(view["name"], 99))
    assignment = await session.get(Assignment, submission.assignment_id)
    assert assignment is not None  # foreign key
    course = await session.get(Course, assignment.course_id)
    return {
        "submission": submission,
        "assignment": assignment,
        "course": course,
        "steps": steps,
        "topic": topic,
        "seq": seq,
        "thumbnail_ready": any(s["name"] == "thumbnail" and s["state"] == "succeeded" for s in steps),
    }


@router.get("/submissions/{submission_id}", response_class=HTMLResponse)
async def submission_page(request: Request, submission_id: int, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    submission = await session.get(Submission, submission_id)
    if submission is None or not await can_view_submission(session, user.id, submission):
        return await not_found(request, session, user, "submission")
    if submission.user_id != user.id:
        return RedirectResponse(f"/staff/submissions/{submission_id}", status_code=303)
    context = await submission_context(session, submission)
    assignment: Assignment = context["assignment"]
    attempts = await attempts_of(session, assignment.id, user.id)
    window = await window_for(session, assignment, user.id)
    released = assignment.grades_released_at is not None
    return await render(
        request,
        session,
        user,
        "submission.html",
        **context,
        attempts=attempts,
        window=window,
        can_resubmit=len(attempts) < assignment.max_attempts and window.state in ("open", "late"),
        grade_visible=released and submission.grade is not None,
    )
