"""Pages say what is true: an unscanned file is never a plain "complete", labels read the same live and after a
reload, students read no developer text, attempts and grade release say what they do, and there is a favicon.

The system here runs without a virus scanner and without an admin system (tests/fixtures/system.py), as
``make run`` does on a machine without clamd: the scan step is skipped and must be shown as such.
Each test makes its own assignment, so none depends on another's uploads or on the order they run in.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Response, expect
from sqlalchemy import select

from core.clock import utcnow
from core.demo import COURSE_CODE
from core.models import Assignment, Course, Submission
from core.pipeline import STEP_NAMES
from tests.browser.conftest import log_in
from tests.fixtures.system import System

pytestmark = pytest.mark.browser

STUDENT, STAFF = "student@handin.local", "staff@handin.local"
DONE = re.compile("succeeded|skipped")
# Text a student must never read: setting names, worker and configuration words.
DEVELOPER_TEXT = re.compile(r"HANDIN_|configured|Traceback|Exception|Error:|smtp|clamd", re.IGNORECASE)


def page_for(browser: Browser, system: System, email: str = STUDENT, **options: Any) -> Page:
    return log_in(browser, system.url, email, system.password(email), **options)


def new_assignment(system: System, *, max_attempts: int = 3, max_bytes: int = 5 * 1024 * 1024) -> int:
    """An open assignment of the demo course for this test alone."""

    async def make(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            course_id = await session.scalar(select(Course.id).where(Course.code == COURSE_CODE))
            now = utcnow()
            assignment = Assignment(
                course_id=course_id,
                title=f"Truth {uuid.uuid4().hex[:6]}",
                opens_at=now - timedelta(minutes=5),
                deadline=now + timedelta(days=7),
                cutoff_at=now + timedelta(days=8),
                max_bytes=max_bytes,
                accepted_types=["pdf", "text", "image", "docx"],
                max_attempts=max_attempts,
            )
            session.add(assignment)
            await session.flush()
            return int(assignment.id)

    return system.run(make)


def essay() -> bytes:
    salt = uuid.uuid4().hex
    return " ".join(f"{salt}word{i}" for i in range(200)).encode()


def choose(page: Page, content: bytes, name: str = "essay.txt") -> None:
    page.get_by_label(re.compile("Choose a file")).set_input_files(
        files=[{"name": name, "mimeType": "text/plain", "buffer": content}]
    )


def upload(page: Page, assignment_id: int) -> int:
    page.goto(f"/assignments/{assignment_id}")
    choose(page, essay())
    page.get_by_role("button", name="Upload").click()
    page.wait_for_url(re.compile(r"/submissions/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def wait_done(page: Page) -> None:
    for step in STEP_NAMES:
        expect(page.locator(f'.step[data-step="{step}"]')).to_have_attribute("data-state", DONE, timeout=30_000)


def steps_as_read(page: Page) -> list[tuple[str, str, str, str]]:
    return [
        (
            item.get_attribute("data-step") or "",
            item.locator(".step-state").inner_text(),
            item.locator(".step-time").inner_text(),
            item.locator(".step-detail").inner_text(),
        )
        for item in page.locator(".step").all()
    ]


def grade(system: System, submission_id: int, value: str) -> None:
    async def put(sessions: Any) -> None:
        async with sessions() as session, session.begin():
            submission = await session.get(Submission, submission_id)
            submission.grade = value

    system.run(put)


def test_a_skipped_scan_is_an_amber_not_virus_scanned_state_never_a_plain_complete(
    browser: Browser, system: System
) -> None:
    assignment_id = new_assignment(system)
    student = page_for(browser, system)
    submission_id = upload(student, assignment_id)
    wait_done(student)

    scan = student.locator('.step[data-step="scan"]')
    expect(scan.locator(".step-state")).to_have_text("not virus-scanned")
    expect(scan).to_have_attribute("data-tone", "warn")
    expect(scan.locator(".step-detail")).to_contain_text("not checked for viruses")
    overall = student.locator("#overall .badge")
    expect(overall).to_have_text("complete, not virus-scanned", timeout=10_000)
    expect(overall).to_have_class(re.compile("status-unscanned"))
    # The attempts list says the same as the status line, without a reload.
    expect(student.locator("[data-current-status] .badge")).to_have_text("complete, not virus-scanned")

    staff = page_for(browser, system, STAFF)
    staff.goto(f"/staff/submissions/{submission_id}")
    expect(staff.locator("#overall .badge")).to_have_text("complete, not virus-scanned")
    expect(staff.locator('.step[data-step="scan"] .step-state')).to_have_text("not virus-scanned")
    staff.goto(f"/staff/assignments/{assignment_id}")
    expect(staff.locator("#submissions-table")).to_contain_text("complete, not virus-scanned")
    staff.get_by_label("Not virus-scanned").check()
    expect(staff.locator(f'#submissions-table tr[data-submission-id="{submission_id}"]')).to_be_visible()
    student.context.close()
    staff.context.close()


def test_labels_read_the_same_live_and_after_a_reload_with_no_developer_text(browser: Browser, system: System) -> None:
    assignment_id = new_assignment(system)
    page = page_for(browser, system)
    upload(page, assignment_id)
    wait_done(page)
    expect(page.locator("#overall .badge")).not_to_have_text("processing", timeout=10_000)
    live = steps_as_read(page)
    live_attempts = page.locator(".attempts").inner_text()

    page.reload()
    assert steps_as_read(page) == live
    assert page.locator(".attempts").inner_text() == live_attempts
    assert "processing" not in live_attempts
    text = page.locator("main").inner_text()
    assert not DEVELOPER_TEXT.search(text), DEVELOPER_TEXT.search(text)
    # The JSON the page reads is in the same words.
    view = page.evaluate(f"fetch('/api/submissions/{page.url.rsplit('/', 1)[1]}').then(r => r.text())")
    assert not DEVELOPER_TEXT.search(view), DEVELOPER_TEXT.search(view)
    page.context.close()


def test_every_page_has_a_favicon_and_asks_for_nothing_that_is_missing(browser: Browser, system: System) -> None:
    page = page_for(browser, system)
    missing: list[str] = []

    def note(response: Response) -> None:
        if response.status == 404:
            missing.append(response.url)

    page.on("response", note)
    for path in ("/courses", f"/assignments/{system.assignment_id}", "/login"):
        page.goto(path)
        icon = page.locator('link[rel="icon"]').get_attribute("href")
        assert icon is not None
        assert page.request.get(icon).status == 200
    page.wait_for_load_state("networkidle")
    assert missing == []
    page.context.close()


def test_upload_is_disabled_with_the_reason_when_it_cannot_succeed(browser: Browser, system: System) -> None:
    assignment_id = new_assignment(system, max_attempts=1, max_bytes=2048)
    page = page_for(browser, system)
    page.goto(f"/assignments/{assignment_id}")
    button = page.get_by_role("button", name="Upload")
    choose(page, b"x" * 4096, "big.txt")
    expect(button).to_be_disabled()
    expect(page.locator("#upload-why")).to_contain_text("Too large")
    expect(page.get_by_role("alert").filter(has_text="limit")).to_be_visible()
    choose(page, b"small enough\n", "small.txt")
    expect(button).to_be_enabled()
    button.click()
    page.wait_for_url(re.compile(r"/submissions/\d+$"))

    page.goto(f"/assignments/{assignment_id}")
    expect(page.get_by_role("button", name="Upload")).to_be_disabled()
    expect(page.locator("#upload-why")).to_have_text("You have used all 1 attempts for this assignment.")
    # The server still refuses, whatever the page shows.
    refused = page.request.post(
        f"/api/assignments/{assignment_id}/submissions",
        multipart={"file": {"name": "again.txt", "mimeType": "text/plain", "buffer": b"again\n"}},
        headers={
            "Origin": system.url,
            "X-CSRF-Token": page.locator('meta[name="csrf-token"]').get_attribute("content") or "",
        },
    )
    assert refused.status == 409
    page.context.close()


def test_a_new_attempt_over_a_marked_one_is_confirmed_first(browser: Browser, system: System) -> None:
    assignment_id = new_assignment(system)
    page = page_for(browser, system)
    first = upload(page, assignment_id)
    grade(system, first, "B+")

    page.goto(f"/assignments/{assignment_id}")
    expect(page.locator("#attempt-rule")).to_contain_text("latest attempt is the one that counts")
    choose(page, essay())
    page.get_by_role("button", name="Upload").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_contain_text("Attempt 1 has already been marked")
    dialog.get_by_role("button", name="Keep attempt 1").click()
    expect(page.locator("#upload-status")).to_contain_text("Nothing handed in")
    assert page.url.endswith(f"/assignments/{assignment_id}")

    page.get_by_role("button", name="Upload").click()
    page.get_by_role("dialog").get_by_role("button", name="Hand in attempt 2").click()
    page.wait_for_url(re.compile(r"/submissions/\d+$"))
    expect(page.locator("h1")).to_contain_text("Attempt 2")
    page.goto(f"/submissions/{first}")
    expect(page.locator("#grade")).to_contain_text("Attempt 2 replaced this one")
    expect(page.locator(".attempts li").first).to_contain_text("counts")

    staff = page_for(browser, system, STAFF)
    staff.goto(f"/staff/assignments/{assignment_id}")
    expect(staff.locator("#marking-progress")).to_have_text(re.compile(r"^0 of 1 latest attempts marked"))
    page.context.close()
    staff.context.close()


def released_at(system: System, assignment_id: int) -> Any:
    async def read(sessions: Any) -> Any:
        async with sessions() as session:
            return (await session.get(Assignment, assignment_id)).grades_released_at

    return system.run(read)


def test_release_now_asks_first_can_be_undone_and_says_why_a_second_release_sent_nothing(
    browser: Browser, system: System
) -> None:
    assignment_id = new_assignment(system)
    student = page_for(browser, system)
    submission_id = upload(student, assignment_id)
    grade(system, submission_id, "A")
    student.context.close()

    staff = page_for(browser, system, STAFF)
    staff.goto(f"/staff/assignments/{assignment_id}")
    staff.get_by_role("button", name="Release grades now").click()
    dialog = staff.get_by_role("dialog")
    expect(dialog).to_contain_text("Release grades to students?")
    dialog.get_by_role("button", name="Not yet").click()
    expect(staff.locator("#release-state")).to_contain_text("Grades not released")

    staff.get_by_role("button", name="Release grades now").click()
    staff.get_by_role("dialog").get_by_role("button", name="Release grades", exact=True).click()
    expect(staff.locator("#release-state")).to_contain_text("you can undo until then")
    staff.get_by_role("button", name="Undo release").click()
    expect(staff.locator("#release-state")).to_contain_text("Release undone")
    assert released_at(system, assignment_id) is None

    for expected in ("1 grades sent", "All grades were already released"):
        staff.locator("#release-now").evaluate("button => { button.dataset.undoSeconds = '1'; }")
        staff.get_by_role("button", name="Release grades now").click()
        staff.get_by_role("dialog").get_by_role("button", name="Release grades", exact=True).click()
        expect(staff.locator("#release-state")).to_contain_text(expected, timeout=15_000)
    assert released_at(system, assignment_id) is not None
    staff.context.close()


def test_the_staff_form_refuses_a_size_above_the_servers_cap(browser: Browser, system: System) -> None:
    assignment_id = new_assignment(system)
    cap_mb = system.settings.max_upload_bytes / 1024 / 1024
    staff = page_for(browser, system, STAFF)
    staff.goto(f"/staff/assignments/{assignment_id}/edit")
    field = staff.get_by_label("Maximum file size (MB)")
    assert float(field.get_attribute("max") or 0) == cap_mb
    field.evaluate("input => input.removeAttribute('max')")  # as a script or an old browser would post
    field.fill(str(cap_mb * 2))
    staff.get_by_role("button", name="Save changes").click()
    expect(staff.locator("#form-errors")).to_contain_text(f"at most {cap_mb:g} MB per file")
    staff.context.close()
