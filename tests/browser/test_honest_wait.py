"""The honest wait on the student's page: place in the queue and an estimate while a step waits, gone once it runs.

The whole system runs (tests/fixtures/system.py); its workers are stopped so
the first step stays queued, then started again.
"""

from __future__ import annotations

import re
import subprocess
import uuid

import pytest
from playwright.sync_api import Browser, expect

from tests.browser.conftest import log_in
from tests.fixtures.system import System

pytestmark = pytest.mark.browser

STUDENT = "student@handin.local"


def stop_workers(system: System) -> None:
    process = system.processes.pop("workers")
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def test_a_queued_step_shows_its_place_and_an_estimate_until_it_runs(browser: Browser, system: System) -> None:
    stop_workers(system)
    try:
        page = log_in(browser, system.url, STUDENT, system.password(STUDENT))
        page.goto(f"/assignments/{system.assignment_id}")
        page.get_by_label(re.compile("Choose a file")).set_input_files(
            files=[{"name": "essay.txt", "mimeType": "text/plain", "buffer": f"My essay {uuid.uuid4()}".encode()}]
        )
        page.get_by_role("button", name="Upload").click()
        page.wait_for_url(re.compile(r"/submissions/\d+$"))

        wait = page.locator("#wait")
        expect(wait).to_be_visible()
        expect(page.locator("#wait-positions")).to_have_text("1st of 1 in the queue for the virus scan.")
        expect(page.locator("#wait-estimate")).to_have_text(re.compile(r"^Estimate: done "))
        # Screen readers hear it once, politely, from a region of its own.
        announcer = page.locator("#wait-announcer")
        expect(announcer).to_have_attribute("aria-live", "polite")
        expect(announcer).to_contain_text("1st of 1 in the queue for the virus scan.")
    finally:
        system.start("workers", "-m", "tests.browser.run_workers")

    expect(page.locator('.step[data-step="scan"]')).to_have_attribute(
        "data-state", re.compile("running|succeeded|skipped"), timeout=30_000
    )
    expect(wait).to_be_hidden(timeout=30_000)
    page.context.close()
