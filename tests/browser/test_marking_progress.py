"""Marking progress on the running system: two members of staff and one student, each in their
own browser context. A claim shows live to the other marker, who must confirm to take it over;
the student sees "being marked" and then "marked" live, never who marks or the grade."""

from __future__ import annotations

import uuid
from typing import Any

from playwright.sync_api import Browser, expect
from sqlalchemy import select

from core.auth import hash_password
from core.db import transaction
from core.models import Assignment, Enrolment, Submission, User
from tests.browser.conftest import log_in
from tests.fixtures.system import System

STUDENT, STAFF = "student@handin.local", "staff@handin.local"


def setting_up(system: System, marker_email: str) -> int:
    """A second marker on the demo course and one submission of the student; the submission's id."""

    async def work(sessions: Any) -> int:
        async with transaction(sessions) as session:
            assignment = await session.get(Assignment, system.assignment_id)
            assert assignment is not None
            student = await session.scalar(select(User).where(User.email == STUDENT))
            assert student is not None
            marker = User(email=marker_email, name="Robin Marker", password_hash=hash_password("marker-pass"))
            session.add(marker)
            await session.flush()
            session.add(Enrolment(user_id=marker.id, course_id=assignment.course_id, role="staff"))
            attempts = await session.scalars(
                select(Submission.attempt).where(
                    Submission.assignment_id == assignment.id, Submission.user_id == student.id
                )
            )
            submission = Submission(
                assignment_id=assignment.id,
                user_id=student.id,
                attempt=max([0, *attempts]) + 1,
                sha256="0" * 64,
                size=12,
                original_filename="essay.txt",
                content_type="text/plain",
                kind="text",
                storage_key=f"k/{uuid.uuid4().hex}",
                status="complete",
            )
            session.add(submission)
            await session.flush()
            return submission.id

    return system.run(work)


def test_two_markers_and_a_student_watch_marking_live(browser: Browser, system: System) -> None:
    marker_email = f"marker-{uuid.uuid4().hex[:8]}@handin.local"
    submission_id = setting_up(system, marker_email)
    pat = log_in(browser, system.url, STAFF, system.password(STAFF))
    robin = log_in(browser, system.url, marker_email, "marker-pass")
    sam = log_in(browser, system.url, STUDENT, system.password(STUDENT))
    try:
        for page in (pat, robin):
            page.goto(f"/staff/submissions/{submission_id}")
        sam.goto(f"/submissions/{submission_id}")
        for page in (pat, robin, sam):
            expect(page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(sam.locator("#marking-state")).to_have_text("Queued for marking.")
        expect(sam.locator("#marking-course-progress")).to_contain_text("submissions marked")
        expect(robin.locator("#marking-state")).to_have_text("Nobody is marking this yet.")

        pat.get_by_role("button", name="I'm marking this").click()
        expect(pat.locator("#marking-state")).to_have_text("You are marking this.")
        expect(robin.locator("#marking-state")).to_have_text("Being marked by Pat Lecturer.")
        expect(sam.locator("#marking-state")).to_have_text("Being marked now.")

        # Robin tries anyway: told who has it, and must confirm.
        robin.get_by_role("button", name="I'm marking this").click()
        expect(robin.locator("#claim-conflict")).to_contain_text(
            "Being marked by Pat Lecturer; confirm to take it over."
        )
        expect(pat.locator("#marking-state")).to_have_text("You are marking this.")
        robin.get_by_role("button", name="Take over marking").click()
        expect(robin.locator("#marking-state")).to_have_text("You are marking this.")
        expect(pat.locator("#marking-state")).to_have_text("Being marked by Robin Marker.")

        robin.get_by_role("textbox", name="Grade").fill("B+")
        robin.get_by_role("button", name="Save grade").click()
        expect(sam.locator("#marking-state")).to_have_text("Marked: the grade appears here when staff release grades.")
        expect(pat.locator("#marking-state")).to_have_text("Marked.")
        expect(sam.locator("#grade-box")).not_to_contain_text("B+")
        expect(sam.locator("body")).not_to_contain_text("Robin")
        expect(sam.locator("body")).not_to_contain_text("Pat Lecturer")
    finally:
        for page in (pat, robin, sam):
            page.context.close()
