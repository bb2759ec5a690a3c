"""Class messaging on the course page with two students and one member of staff, each in their
own browser context, on the running system: questions live, answers, a pinned announcement,
hiding, muting, unread counts and a reload that shows the same history once."""

from __future__ import annotations

import re

from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import log_in
from tests.fixtures.system import System

STUDENT, STUDENT2, STAFF = "student@handin.local", "student2@handin.local", "staff@handin.local"


def open_course(page: Page) -> None:
    page.get_by_role("link", name="Class messages").first.click()
    page.wait_for_url(re.compile(r"/courses/\d+$"))
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")


def send(page: Page, text: str, question: bool = True) -> None:
    page.get_by_label("Your question or message").fill(text)
    page.get_by_label("This is a question for staff").set_checked(question)
    page.get_by_role("button", name="Send").click()


def test_questions_answers_announcements_moderation_and_unread(browser: Browser, system: System) -> None:
    staff = log_in(browser, system.url, STAFF, system.password(STAFF))
    sam = log_in(browser, system.url, STUDENT, system.password(STUDENT))
    alex = log_in(browser, system.url, STUDENT2, system.password(STUDENT2))
    try:
        # Alex stays on the courses list: the unread count grows there, and in the title.
        expect(alex.locator("[data-unread-course]").first).to_be_hidden()
        open_course(staff)
        open_course(sam)
        log = staff.get_by_role("log")

        send(sam, "When is the exam?")
        question = log.locator("li", has_text="When is the exam?")
        expect(question).to_be_visible()
        expect(question.locator(".chat-state")).to_have_text("Question")
        expect(alex.locator("[data-unread-course]").first).to_have_text("1 unread")
        expect(alex).to_have_title(re.compile(r"^\(1\) "))

        # Staff answer: the question is marked answered on the student's page.
        question.get_by_role("button", name="Answer").click()
        staff.get_by_label("Your answer").fill("Friday at nine.")
        staff.get_by_role("button", name="Send").click()
        sam_question = sam.get_by_role("log").locator("li", has_text="When is the exam?").first
        expect(sam_question.locator(".chat-state")).to_have_text("Answered")
        expect(sam_question.locator(".chat-replies")).to_contain_text("Friday at nine.")

        staff.get_by_label("New announcement").fill("Bring a pen on Friday.")
        staff.get_by_role("button", name="Post announcement").click()
        expect(sam.get_by_role("list", name="Pinned announcements")).to_contain_text("Bring a pen on Friday.")
        expect(alex.locator("[data-unread-course]").first).to_have_text("3 unread")

        # Hide and delete remove a message live for everyone else.
        send(sam, "Anyone selling notes?", question=False)
        note = log.locator("li", has_text="Anyone selling notes?")
        note.get_by_role("button", name="Hide").click()
        expect(note.locator(".chat-hidden")).to_be_visible()  # staff still see it, marked
        expect(sam.get_by_role("log")).not_to_contain_text("Anyone selling notes?")
        send(sam, "This is spam", question=False)
        spam = log.locator("li", has_text="This is spam")
        spam.get_by_role("button", name="Delete").click()
        expect(sam.get_by_role("log")).not_to_contain_text("This is spam")
        expect(log).not_to_contain_text("This is spam")

        # A muted student's next message is refused, with words.
        staff.get_by_label("Student", exact=True).select_option(label="Sam Student")
        staff.get_by_label("For how many minutes (0 lifts a mute)").fill("30")
        staff.get_by_role("button", name="Mute").click()
        expect(staff.locator("#mute-status")).to_contain_text("Sam Student is muted until")
        send(sam, "Why was I hidden?")
        expect(sam.locator("#message-error")).to_contain_text("Staff have muted you in this course")
        expect(log).not_to_contain_text("Why was I hidden?")

        # A reload shows the same history, once each.
        before = sam.get_by_role("log").locator("li").all_inner_texts()
        sam.reload()
        expect(sam.get_by_role("log").locator("li.chat-answer", has_text="Friday at nine.")).to_have_count(1)
        expect(sam.get_by_role("log").locator("li")).to_have_count(len(before))
        assert sam.get_by_role("log").locator("li").all_inner_texts() == before
        expect(sam.get_by_role("list", name="Pinned announcements").locator("li")).to_have_count(1)
        expect(sam.locator("#muted-notice")).to_be_visible()
    finally:
        for page in (staff, sam, alex):
            page.context.close()
