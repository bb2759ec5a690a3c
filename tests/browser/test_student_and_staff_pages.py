"""The pages in headless Chromium against the whole system (api, router, every worker) started here.

Headless Chromium reports every page as visible (it has no tab strip or window
to hide behind), so the hidden-tab test sets what the Page Visibility API
reports through an init script and fires ``visibilitychange`` itself — the
same two things a browser does when a tab goes to the background.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect
from sqlalchemy import select

from core.flash import FlashSpec, push_flash
from core.models import Flash, Submission, SubmissionStep, User
from core.pipeline import STEP_NAMES
from core.queues import connect, enqueue_step
from core.storage import Area, make_storage
from tests.browser.conftest import log_in
from tests.fixtures.system import System

pytestmark = pytest.mark.browser

STUDENT, OTHER, STAFF = "student@handin.local", "student2@handin.local", "staff@handin.local"
DONE = re.compile("succeeded|skipped")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
# What a browser reports for a background tab; flipped by `set_hidden`.
VISIBILITY_SWITCH = """
(() => {
  let hidden = false;
  Object.defineProperty(Document.prototype, 'visibilityState', {
    configurable: true, get: () => (hidden ? 'hidden' : 'visible'),
  });
  Object.defineProperty(Document.prototype, 'hidden', { configurable: true, get: () => hidden });
  window.__setHidden = (value) => { hidden = value; document.dispatchEvent(new Event('visibilitychange')); };
})();
"""


def student_page(browser: Browser, system: System, email: str = STUDENT, **options: Any) -> Page:
    return log_in(browser, system.url, email, system.password(email), **options)


def mark_no_reload(page: Page) -> None:
    """A marker that a reload or navigation would wipe out."""
    page.evaluate("window.__sameDocument = true")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sameDocument === true"), "the page was reloaded"


def upload(page: Page, system: System, content: bytes, name: str = "essay.txt") -> int:
    """Upload through the assignment page; returns the id of the submission page it lands on."""
    page.goto(f"/assignments/{system.assignment_id}")
    # Record every value the progress bar takes, across the navigation that follows the 202.
    page.evaluate(
        """() => {
          const bar = document.getElementById('upload-progress');
          new MutationObserver(() => {
            const seen = JSON.parse(sessionStorage.getItem('progress') || '[]');
            seen.push(Number(bar.value));
            sessionStorage.setItem('progress', JSON.stringify(seen));
          }).observe(bar, { attributes: true });
        }"""
    )
    page.get_by_label(re.compile("Choose a file")).set_input_files(
        files=[{"name": name, "mimeType": "text/plain", "buffer": content}]
    )
    page.get_by_role("button", name="Upload").click()
    if page.locator("#replace-dialog[open]").count():  # an earlier test marked the latest attempt
        page.locator("#replace-confirm").click()
    page.wait_for_url(re.compile(r"/submissions/\d+$"))
    return int(page.url.rsplit("/", 1)[1])


def essay(words: int = 400) -> bytes:
    # Unique text per call, so similarity finds nothing and the upload is big enough to show progress.
    salt = uuid.uuid4().hex
    return " ".join(f"{salt[i % 32 :]}word{i}" for i in range(words)).encode()


def wait_all_steps_done(page: Page) -> None:
    try:
        for step in STEP_NAMES:
            expect(page.locator(f'.step[data-step="{step}"]')).to_have_attribute("data-state", DONE, timeout=30_000)
        expect(page.locator("#overall")).to_contain_text("complete", timeout=10_000)
    except AssertionError as failure:
        # Say whether the pipeline or the page fell behind.
        topic = page.locator("#submission").get_attribute("data-topic")
        events = page.evaluate(f"fetch('/api/topics/{topic}/events?after=0').then(r => r.json())")
        trail = [(e["seq"], e["type"], e["data"].get("step")) for e in events["events"]]
        state = page.evaluate("window.handinLive && window.handinLive.state")
        topics = page.evaluate(
            "window.handinLive && [...window.handinLive._topics.values()].map(e => ({topic: e.topic,"
            " subscriptionId: e.subscriptionId, requested: e.requested, syncing: e.syncing,"
            " buffered: e.buffer.length, lastSeq: [...e.listeners].map(l => l.lastSeq)}))"
        )
        raise AssertionError(f"{failure}\nconnection: {state}\ntopics: {topics}\naudit trail: {trail}") from None


def test_a_student_uploads_with_a_progress_bar_and_watches_every_step_live(browser: Browser, system: System) -> None:
    page = student_page(browser, system)
    submission_id = upload(page, system, essay())
    mark_no_reload(page)
    progress = page.evaluate("JSON.parse(sessionStorage.getItem('progress') || '[]')")
    assert progress and max(progress) == 100, progress

    wait_all_steps_done(page)
    expect(page.locator('.step[data-step="scan"] .step-state')).to_have_text("not virus-scanned")  # no scanner
    expect(page.locator('.step[data-step="similarity"] .step-detail')).to_contain_text("similarity")
    expect(page.locator("#thumbnail img")).to_be_visible(timeout=10_000)
    expect(page.locator("#connection")).to_have_text("Live")
    assert_not_reloaded(page)
    assert page.locator(".step .step-time time").count() >= 4  # each finished step shows its time

    # The receipt is a page of its own, with the past attempts listed.
    page.reload()
    expect(page.locator(".attempts")).to_contain_text("Attempt 1")
    page.context.close()
    system.submission_id = submission_id  # type: ignore[attr-defined]


def confirm_release(staff: Page) -> None:
    """Release now through the confirmation, with a one-second undo window."""
    staff.locator("#release-now").evaluate("button => { button.dataset.undoSeconds = '1'; }")
    staff.get_by_role("button", name="Release grades now").click()
    staff.get_by_role("button", name="Release grades", exact=True).click()


def test_released_grades_appear_on_the_students_open_page_with_a_flash(browser: Browser, system: System) -> None:
    student = student_page(browser, system)
    submission_id = upload(student, system, essay())
    wait_all_steps_done(student)
    expect(student.locator("#grade")).to_contain_text("Not released yet")
    mark_no_reload(student)

    staff = student_page(browser, system, STAFF)
    staff.goto(f"/staff/submissions/{submission_id}")
    staff.get_by_label("Grade", exact=True).fill("A-")
    staff.get_by_role("textbox", name="Feedback").fill("Clear and well argued.")
    staff.get_by_role("button", name="Save grade").click()
    expect(staff.locator("#grade-status")).to_contain_text("Saved")
    staff.goto(f"/staff/assignments/{system.assignment_id}")
    expect(staff.locator("#submissions-table")).to_contain_text("A-")
    confirm_release(staff)
    expect(staff.locator("#release-state")).to_contain_text("Grades released", timeout=15_000)

    expect(student.locator("#grade .grade-value")).to_have_text("A-", timeout=10_000)
    expect(student.locator("#grade .feedback")).to_have_text("Clear and well argued.")
    toast = student.locator("#toasts .toast", has_text="are released")
    expect(toast).to_be_visible()
    expect(toast.get_by_role("link", name="See your grade")).to_be_visible()
    assert_not_reloaded(student)

    # Releasing again adds no second message.
    confirm_release(staff)
    expect(staff.locator("#release-state")).to_contain_text("0 students told", timeout=15_000)
    student.context.close()
    staff.context.close()


def test_a_refused_upload_shows_the_reason_in_words(browser: Browser, system: System) -> None:
    page = student_page(browser, system, OTHER)
    page.goto(f"/assignments/{system.assignment_id}")
    program = b"MZ\x90\x00" + bytes(range(256)) * 8
    page.get_by_label(re.compile("Choose a file")).set_input_files(
        files=[{"name": "program.exe", "mimeType": "application/octet-stream", "buffer": program}]
    )
    page.get_by_role("button", name="Upload").click()
    alert = page.get_by_role("alert").filter(has_text=re.compile(r"\w"))
    expect(alert.first).to_be_visible()
    assert "HTTP" not in alert.first.inner_text()  # the api's own words, not a status code
    assert page.url.endswith(f"/assignments/{system.assignment_id}")
    page.context.close()


def user_id(system: System, email: str) -> int:
    async def find(sessions: Any) -> int:
        async with sessions() as session:
            return int(await session.scalar(select(User.id).where(User.email == email)))

    return system.run(find)


def push(system: System, email: str, text: str) -> int:
    uid = user_id(system, email)

    async def send(sessions: Any) -> int:
        redis = await connect(system.settings.redis_url)
        try:
            flash = await push_flash(sessions, redis, uid, FlashSpec(text=text, auto_hide_seconds=None))
        finally:
            await redis.aclose()
        assert flash is not None
        return flash.id

    return system.run(send)


def confirmed(system: System, flash_id: int) -> bool:
    async def read(sessions: Any) -> bool:
        async with sessions() as session:
            flash = await session.get(Flash, flash_id)
            return flash is not None and flash.confirmed_at is not None

    return system.run(read)


def test_a_flash_in_a_hidden_tab_is_not_confirmed_and_shows_again(browser: Browser, system: System) -> None:
    page = student_page(browser, system, OTHER)
    page.context.add_init_script(VISIBILITY_SWITCH)
    page.goto("/courses")
    expect(page.locator("#connection")).to_have_text("Live")
    page.evaluate("window.__setHidden(true)")
    flash_id = push(system, OTHER, "Hidden-tab notice")
    toast = page.locator("#toasts .toast", has_text="Hidden-tab notice")
    expect(toast).to_be_attached()
    page.wait_for_timeout(4_000)  # longer than it takes to confirm a visible message
    assert not confirmed(system, flash_id)

    page.goto("/courses")  # the next page view
    expect(page.locator("#toasts .toast", has_text="Hidden-tab notice")).to_be_visible()
    page.context.close()


def test_a_flash_seen_long_enough_is_confirmed_and_does_not_come_back(browser: Browser, system: System) -> None:
    page = student_page(browser, system, OTHER)
    expect(page.locator("#connection")).to_have_text("Live")
    flash_id = push(system, OTHER, "Seen notice")
    toast = page.locator("#toasts .toast", has_text="Seen notice")
    expect(toast).to_be_visible()
    expect(toast).to_have_attribute("data-confirmed", "seen", timeout=8_000)
    page.wait_for_timeout(300)
    assert confirmed(system, flash_id)
    page.goto("/courses")
    expect(page.locator("h1")).to_have_text("My courses")
    page.wait_for_timeout(500)
    expect(page.locator("#toasts .toast", has_text="Seen notice")).to_have_count(0)
    page.context.close()


def test_a_student_cannot_open_another_students_submission_or_file(browser: Browser, system: System) -> None:
    owner = student_page(browser, system)
    submission_id = upload(owner, system, essay())
    owner.context.close()

    other = student_page(browser, system, OTHER)
    answer = other.goto(f"/submissions/{submission_id}")
    assert answer is not None and answer.status == 404
    expect(other.locator("h1")).to_have_text("Not found")
    for path in ("", "/file", "/thumbnail", "/events?after=0"):
        response = other.request.get(f"/api/submissions/{submission_id}{path}")
        assert response.status == 404, (path, response.status)
    assert other.goto(f"/staff/submissions/{submission_id}").status == 404  # type: ignore[union-attr]
    other.context.close()


def quiet_submission(system: System) -> int:
    """A submission as intake leaves it, but with its first step not yet queued."""

    async def make(sessions: Any) -> int:
        storage = make_storage(system.settings)
        content = essay(300)
        key = f"{system.assignment_id}/{uuid.uuid4().hex}"
        await storage.put_bytes(Area.incoming, key, content)
        await storage.close()
        async with sessions() as session, session.begin():
            owner = await session.scalar(select(User.id).where(User.email == STUDENT))
            attempts = await session.scalars(select(Submission.attempt).where(Submission.user_id == owner))
            submission = Submission(
                assignment_id=system.assignment_id,
                user_id=owner,
                attempt=max([0, *attempts]) + 1,
                sha256=hashlib.sha256(content).hexdigest(),
                size=len(content),
                original_filename="offline.txt",
                content_type="text/plain",
                kind="text",
                storage_key=key,
                status="processing",
            )
            session.add(submission)
            await session.flush()
            session.add_all(SubmissionStep(submission_id=submission.id, step=step) for step in STEP_NAMES)
        return submission.id

    return system.run(make)


def start_pipeline(system: System, submission_id: int) -> None:
    async def go(sessions: Any) -> None:
        async with sessions() as session, session.begin():
            row = await session.scalar(
                select(SubmissionStep).where(
                    SubmissionStep.submission_id == submission_id, SubmissionStep.step == "scan"
                )
            )
            row.state = "queued"
        redis = await connect(system.settings.redis_url)
        try:
            await enqueue_step(redis, "scan", submission_id)
        finally:
            await redis.aclose()

    system.run(go)


def wait_complete_in_db(system: System, submission_id: int, page: Page) -> None:
    async def status(sessions: Any) -> str:
        async with sessions() as session:
            row = await session.get(Submission, submission_id)
            return row.status if row else "missing"

    for _ in range(150):
        if system.run(status) == "complete":
            return
        page.wait_for_timeout(200)
    raise AssertionError("the pipeline did not finish")


def test_a_dropped_websocket_reconnects_and_the_page_catches_up(browser: Browser, system: System) -> None:
    submission_id = quiet_submission(system)
    page = student_page(browser, system)
    page.goto(f"/submissions/{submission_id}")
    expect(page.locator("#connection")).to_have_text("Live")
    mark_no_reload(page)
    expect(page.locator('.step[data-step="store"]')).to_have_attribute("data-state", "pending")

    system.kill_router()
    try:
        expect(page.locator("#connection")).to_contain_text("reconnecting")
        start_pipeline(system, submission_id)  # every step happens while the page is cut off
        wait_complete_in_db(system, submission_id, page)
        expect(page.locator('.step[data-step="store"]')).to_have_attribute("data-state", "pending")
    finally:
        system.start_router()
    expect(page.locator("#connection")).to_have_text("Live", timeout=20_000)
    wait_all_steps_done(page)
    assert_not_reloaded(page)
    page.context.close()


def test_screenshots_of_the_main_pages(browser: Browser, system: System, tmp_path: Path) -> None:
    """Every main page renders for its people; with HANDIN_SCREENSHOTS=1 the shots refresh docs/screenshots/
    (otherwise they go to a temporary folder, so a test run leaves the checkout clean)."""
    shots = SCREENSHOTS if os.environ.get("HANDIN_SCREENSHOTS") == "1" else tmp_path
    shots.mkdir(parents=True, exist_ok=True)
    submission_id = getattr(system, "submission_id", None)
    student = student_page(browser, system, viewport={"width": 1100, "height": 800})
    student.screenshot(path=shots / "student-courses.png", full_page=True)
    student.goto(f"/assignments/{system.assignment_id}")
    student.screenshot(path=shots / "student-assignment.png", full_page=True)
    if submission_id:
        student.goto(f"/submissions/{submission_id}")
        expect(student.locator("#connection")).to_have_text("Live")
        student.screenshot(path=shots / "student-submission.png", full_page=True)
    phone = student_page(browser, system, viewport={"width": 390, "height": 844})
    if submission_id:
        phone.goto(f"/submissions/{submission_id}")
    phone.screenshot(path=shots / "phone-submission.png", full_page=True)
    staff = student_page(browser, system, STAFF, viewport={"width": 1100, "height": 800})
    staff.goto(f"/staff/assignments/{system.assignment_id}")
    expect(staff.locator("#submissions-table tbody tr").first).not_to_contain_text("Loading")
    staff.screenshot(path=shots / "staff-submissions.png", full_page=True)
    if submission_id:
        staff.goto(f"/staff/submissions/{submission_id}")
        staff.screenshot(path=shots / "staff-submission.png", full_page=True)
    staff.goto("/staff/dashboard")
    expect(staff.locator("#arrivals-plot svg")).to_be_visible()
    staff.screenshot(path=shots / "staff-dashboard.png", full_page=True)
    staff.goto(f"/staff/assignments/{system.assignment_id}/edit")
    staff.screenshot(path=shots / "staff-assignment-edit.png", full_page=True)
    for page in (student, phone, staff):
        page.context.close()
