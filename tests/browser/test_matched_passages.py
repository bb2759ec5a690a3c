"""The staff similarity view in headless Chromium: matched passages of both texts, side by side.

Two students upload through the real page on the whole running system; the second copies a
paragraph of the first's essay into the middle of their own, re-cased. Staff open the copy and read
the copied paragraph highlighted in both texts, in one row of the passages table, with the marks
announced to screen readers.
"""

from __future__ import annotations

import random
import re

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.test_student_and_staff_pages import DONE, OTHER, STAFF, student_page, upload
from tests.fixtures.system import System

pytestmark = pytest.mark.browser


def sentences(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 9))) for _ in range(400)]
    return [" ".join(rng.choices(words, k=rng.randint(8, 14))).capitalize() + "." for _ in range(count)]


def test_staff_read_the_copied_passage_highlighted_in_both_texts(browser: Browser, system: System) -> None:
    source = sentences(101, 40)
    copied = " ".join(source[12:20])
    own = sentences(102, 30)
    copy = " ".join(own[:15]) + "\n\n" + copied.upper() + "\n\n" + " ".join(own[15:])

    first = student_page(browser, system)
    upload(first, system, "\n".join(source).encode())
    expect(first.locator('.step[data-step="similarity"]')).to_have_attribute("data-state", DONE, timeout=30_000)
    first.context.close()
    second = student_page(browser, system, OTHER)
    copy_id = upload(second, system, copy.encode(), name="mine.txt")
    expect(second.locator('.step[data-step="similarity"]')).to_have_attribute("data-state", DONE, timeout=30_000)
    # The student's own page never shows the passages or whom they match.
    expect(second.locator("table.passages")).to_have_count(0)
    second.context.close()

    staff = student_page(browser, system, STAFF)
    staff.goto(f"/staff/submissions/{copy_id}")
    table = staff.locator("table.passages")
    expect(table).to_be_visible()
    expect(table.locator("thead th")).to_have_text(["Passage", "This submission", re.compile("Student")])
    row = table.locator("tbody tr").first
    mine, theirs = row.locator("td").nth(0).locator("mark"), row.locator("td").nth(1).locator("mark")
    # The same paragraph, as each student wrote it: upper case in the copy, as written in the source.
    expect(mine).to_contain_text(source[14].upper())
    expect(theirs).to_contain_text(source[14])
    # Context around the highlight: the copy's own words before it.
    expect(row.locator("td").nth(0)).to_contain_text(own[14].split()[-1])
    # Screen readers hear where each highlight starts and ends.
    expect(mine.locator(".visually-hidden").first).to_have_text("[match start]")
    expect(mine.locator(".visually-hidden").last).to_have_text("[match end]")
    assert staff.locator(".matches a[aria-current='true']").count() == 1
    staff.context.close()
