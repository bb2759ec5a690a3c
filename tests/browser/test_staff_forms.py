"""Staff create and edit an assignment through the real form, on the running system (SQLite, as `make run`).

On SQLite the save used to wait on the request's own write lock for the busy
timeout and end in "Internal Server Error".
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import log_in
from tests.fixtures.system import System

pytestmark = pytest.mark.browser

STAFF = "staff@handin.local"


def local_value(moment: datetime) -> str:
    """What a datetime-local field holds: the reader's wall-clock time to the minute."""
    return moment.strftime("%Y-%m-%dT%H:%M")


def test_staff_create_an_assignment_and_edit_it_through_the_form(browser: Browser, system: System) -> None:
    # Not UTC: the dates typed are the reader's local time and must come back as typed.
    staff = log_in(browser, system.url, STAFF, system.password(STAFF), timezone_id="Europe/Berlin")
    title = f"Queues essay {uuid.uuid4().hex[:6]}"
    deadline = (datetime.now() + timedelta(days=9)).replace(hour=17, minute=30, second=0, microsecond=0)
    try:
        staff.goto("/staff")
        staff.get_by_role("link", name="New assignment").first.click()
        staff.get_by_label("Title", exact=True).fill(title)
        staff.get_by_label("Deadline (your local time)", exact=True).fill(local_value(deadline))
        staff.get_by_label("Cut-off: nothing accepted after (your local time)").fill(
            local_value(deadline + timedelta(days=1))
        )
        staff.get_by_label("Attempts allowed").fill("4")
        staff.get_by_role("button", name="Create assignment").click()
        staff.wait_for_url(re.compile(r"/staff/assignments/\d+$"))
        expect(staff.get_by_role("heading", level=1)).to_contain_text(title)

        staff.get_by_role("link", name="Edit assignment and extensions").click()
        expect(staff.get_by_label("Title", exact=True)).to_have_value(title)
        expect(staff.get_by_label("Deadline (your local time)", exact=True)).to_have_value(local_value(deadline))
        expect(staff.get_by_label("Attempts allowed")).to_have_value("4")
        later = deadline + timedelta(days=2, hours=1)
        staff.get_by_label("Title", exact=True).fill(f"{title}, revised")
        staff.get_by_label("Deadline (your local time)", exact=True).fill(local_value(later))
        staff.get_by_label("Cut-off: nothing accepted after (your local time)").fill(
            local_value(later + timedelta(days=1))
        )
        staff.get_by_role("button", name="Save changes").click()
        staff.wait_for_url(re.compile(r"/staff/assignments/\d+\?saved=1$"))
        expect(staff.get_by_role("status").filter(has_text="Changes saved.")).to_be_visible()
        expect(staff.get_by_role("heading", level=1)).to_contain_text(f"{title}, revised")

        staff.get_by_role("link", name="Edit assignment and extensions").click()
        expect(staff.get_by_label("Title", exact=True)).to_have_value(f"{title}, revised")
        expect(staff.get_by_label("Deadline (your local time)", exact=True)).to_have_value(local_value(later))
    finally:
        staff.context.close()
