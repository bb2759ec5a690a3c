"""The public receipt check (/verify) in a real browser: a downloaded receipt and its file check out,
a different file or an edited receipt are shown as not valid with the reason, and the file is hashed
in the page (only its SHA-256 reaches the server)."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Request, expect

from tests.browser.test_pages_truth import page_for, upload
from tests.fixtures.system import System

pytestmark = pytest.mark.browser


def download_receipt(page: Page) -> bytes:
    with page.expect_download() as waiting:
        page.get_by_role("link", name="Download your signed receipt").click()
    path = waiting.value.path()
    return path.read_bytes()


def check(page: Page, receipt: bytes, file: tuple[str, bytes] | None = None) -> None:
    page.get_by_label("Receipt (.json)").set_input_files(
        files=[{"name": "handin-receipt.json", "mimeType": "application/json", "buffer": receipt}]
    )
    chooser = page.get_by_label("Submitted file (optional)")
    if file is None:
        chooser.set_input_files(files=[])
    else:
        chooser.set_input_files(files=[{"name": file[0], "mimeType": "text/plain", "buffer": file[1]}])
    page.get_by_role("button", name="Check the receipt").click()


def test_anyone_checks_a_downloaded_receipt_and_its_file(browser: Browser, system: System) -> None:
    student = page_for(browser, system)
    submission_id = upload(student, system.assignment_id)
    content = _uploaded_content(student, submission_id)
    receipt = download_receipt(student)
    # An appeals panel: no login, a fresh browser.
    context = browser.new_context(base_url=system.url)
    panel = context.new_page()
    sent: list[dict[str, Any]] = []

    def record(request: Request) -> None:
        if request.url.endswith("/api/receipts/verify"):
            sent.append(json.loads(request.post_data or "{}"))

    panel.on("request", record)
    panel.goto("/verify")

    check(panel, receipt, ("essay.txt", content))
    verdict = panel.locator("#verdict")
    expect(panel.get_by_role("heading", name="Valid receipt")).to_be_visible()
    expect(verdict).to_have_attribute("data-valid", "true")
    expect(verdict).to_contain_text(re.compile(r"valid, signed by 127\.0\.0\.1:\d+ with key [\w.-]+, file matches"))
    expect(verdict).to_contain_text(f"{submission_id}")
    assert sent and set(sent[-1]) == {"receipt", "sha256", "size"}  # the hash went, not the file

    check(panel, receipt, ("essay.txt", content + b" and a sentence added later"))
    expect(panel.get_by_role("heading", name="Not valid")).to_be_visible()
    expect(verdict).to_have_attribute("data-valid", "false")
    expect(verdict).to_contain_text("the file does not match")

    edited = json.loads(receipt)
    edited["payload"]["accepted_at"] = "2020-01-01T00:00:00.000Z"
    check(panel, json.dumps(edited).encode())
    expect(panel.get_by_role("heading", name="Not valid")).to_be_visible()
    expect(verdict).to_contain_text("changed after it was signed")

    check(panel, b"not json at all " + uuid.uuid4().hex.encode())
    expect(verdict).to_contain_text("is not a handin receipt")
    context.close()
    student.context.close()


def _uploaded_content(page: Page, submission_id: int) -> bytes:
    answer = page.request.get(f"/api/submissions/{submission_id}/file")
    assert answer.ok, answer.text()
    return answer.body()
