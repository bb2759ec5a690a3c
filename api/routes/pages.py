"""HTML pages for students (and the pages everyone shares): login, courses, assignment, submission.

Staff pages live in ``staff_pages.py``. Every page is rendered from the
database and then kept current by its script over the WebSocket router.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from api.deps import OptionalUser, SessionDep, SettingsDep
from api.routes.auth import safe_next
from api.routes.views import attempts_of, course_role, render, topic_seq, window_for
from api.views import ordered_steps, status_view, step_view
from core import keys, wording
from core.access import can_view_submission
from core.audience import Audience
from core.clock import utcnow
from core.deadlines import Window
from core.models import Assignment, Course, Enrolment, Submission, SubmissionStep, User

router = APIRouter(tags=["pages"], include_in_schema=False)


def to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={target}", status_code=303)


async def not_found(request: Request, session: SessionDep, user: User | None, what: str) -> HTMLResponse:
    """One answer for "missing" and "not yours", so nobody learns what exists."""
    return await render(request, session, user, "not_found.html", status_code=404, what=what)


async def attempt_lines(session: SessionDep, attempts: list[Submission]) -> list[dict[str, Any]]:
    """Each attempt (newest first) with the status a page shows and whether it is the one that counts.

    The rule: a student's latest attempt is the one that counts and is marked; a new
    attempt replaces the one before (core.grades counts marking progress the same way).
    """
    ids = [attempt.id for attempt in attempts]
    scans: dict[int, str] = {}
    if ids:
        found = await session.execute(
            select(SubmissionStep.submission_id, SubmissionStep.state).where(
                SubmissionStep.step == "scan", SubmissionStep.submission_id.in_(ids)
            )
        )
        scans = {int(submission_id): str(state) for submission_id, state in found.all()}
    lines = []
    for index, attempt in enumerate(attempts):
        text, tone = wording.overall(attempt.status, scans.get(attempt.id))
        lines.append({"submission": attempt, "status_text": text, "status_tone": tone, "counts": index == 0})
    return lines


def upload_refusal(window: Window, attempts_left: int, max_attempts: int) -> str | None:
    """Why an upload cannot succeed now (the intake would refuse it), in the student's words; None if it can."""
    if attempts_left <= 0:
        return f"You have used all {max_attempts} attempts for this assignment."
    if window.state == "closed":
        return "The cut-off has passed: no more work is accepted."
    if window.state == "not_open":
        return "This assignment is not open yet."
    return None


@router.get("/", response_class=HTMLResponse)
async def home(request: Request, user: OptionalUser, session: SessionDep) -> Response:
    if user is None:
        return to_login(request)
    return RedirectResponse("/courses", status_code=303)


@router.get("/login", response_class=HTMLResponse)
async def login_page(request: Request, user: OptionalUser, session: SessionDep, next: str = "/courses") -> Response:
    # Only same-site paths, so the login form cannot be used to bounce users elsewhere.
    return await render(request, session, None, "login.html", next=safe_next(next, "/courses"), already=user)


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
            lines = await attempt_lines(session, attempts[:1])
            rows.append(
                {
                    "assignment": assignment,
                    "window": await window_for(session, assignment, user.id),
                    "attempts": attempts,
                    "latest": lines[0] if lines else None,
                }
            )
        courses.append({"course": course, "role": enrolment.role, "assignments": rows})
    return await render(request, session, user, "courses.html", courses=courses)


@router.get("/assignments/{assignment_id}", response_class=HTMLResponse)
async def assignment_page(
    request: Request, assignment_id: int, user: OptionalUser, session: SessionDep, settings: SettingsDep
) -> Response:
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
    attempts_left = max(0, assignment.max_attempts - len(attempts))
    latest = attempts[0] if attempts else None
    return await render(
        request,
        session,
        user,
        "assignment.html",
        assignment=assignment,
        course=course,
        window=window,
        attempts=await attempt_lines(session, attempts),
        attempts_left=attempts_left,
        # The limit intake applies: the assignment's, never above the server's own cap.
        max_bytes=min(assignment.max_bytes, settings.max_upload_bytes),
        refusal=upload_refusal(window, attempts_left, assignment.max_attempts),
        # A new attempt replaces a marked one: the page asks first.
        replaces_marked=latest.attempt if latest is not None and latest.grade is not None else None,
        topic=topic,
        seq=seq,
    )


async def submission_context(session: SessionDep, submission: Submission, viewer: Audience) -> dict[str, Any]:
    """What the student's and the staff's submission pages both show, as ``viewer`` may see it."""
    topic = keys.submission_topic(submission.id)
    seq = await topic_seq(session, topic)  # before the rows: later changes are replayed, none lost
    await session.refresh(submission)
    rows = ordered_steps(
        await session.scalars(select(SubmissionStep).where(SubmissionStep.submission_id == submission.id))
    )
    status_text, status_tone = status_view(submission, rows)
    assignment = await session.get(Assignment, submission.assignment_id)
    assert assignment is not None  # foreign key
    course = await session.get(Course, assignment.course_id)
    return {
        "submission": submission,
        "assignment": assignment,
        "course": course,
        # The same step_view as the JSON the live script re-reads: labels never change on reload.
        "steps": [step_view(row, viewer) for row in rows],
        "status_text": status_text,
        "status_tone": status_tone,
        "topic": topic,
        "seq": seq,
        "thumbnail_ready": any(row.step == "thumbnail" and row.state == "succeeded" for row in rows),
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
    context = await submission_context(session, submission, Audience.OWNER)
    assignment: Assignment = context["assignment"]
    # Read before the assignment's row: a release after this seq reaches the page live.
    assignment_seq = await topic_seq(session, keys.assignment_topic(assignment.id))
    await session.refresh(assignment)
    attempts = await attempts_of(session, assignment.id, user.id)
    window = await window_for(session, assignment, user.id)
    released = assignment.grades_released_at is not None and assignment.grades_released_at <= utcnow()
    latest = attempts[0] if attempts else submission
    return await render(
        request,
        session,
        user,
        "submission.html",
        **context,
        attempts=await attempt_lines(session, attempts),
        window=window,
        can_resubmit=len(attempts) < assignment.max_attempts and window.accepting,
        released=released,
        grade_visible=released and submission.grade is not None,
        replaced_by=latest.attempt if latest.id != submission.id else None,
        assignment_seq=assignment_seq,
    )
