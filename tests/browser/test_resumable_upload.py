"""The student's page uploads with tus and survives a dropped connection and a reload, in headless Chromium."""

from __future__ import annotations

import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, Route, expect

from core.models import Submission
from tests.browser.conftest import log_in
from tests.fixtures.system import System

pytestmark = pytest.mark.browser

STUDENT, OTHER = "student@handin.local", "student2@handin.local"
CHUNK = 1024 * 1024  # the page's chunk size (api/static/js/tus.js)


def long_essay(path: Path) -> bytes:
    """About 2.5 chunks of text, unique per call."""
    salt = uuid.uuid4().hex
    data = " ".join(f"{salt}-word{i}" for i in range(int(2.5 * CHUNK / 40))).encode()
    path.write_bytes(data)
    return data


def stored_sha256(system: System, submission_id: int) -> str:
    async def read(sessions: Any) -> str:
        async with sessions() as session:
            submission = await session.get(Submission, submission_id)
            assert submission is not None
            return submission.sha256

    return system.run(read)


def choose_and_upload(page: Page, path: Path) -> None:
    page.get_by_label(re.compile("Choose a file")).set_input_files(path)
    page.get_by_role("button", name="Upload").click()


def submission_id_of(page: Page) -> int:
    page.wait_for_url(re.compile(r"/submissions/\d+$"), timeout=60_000)
    return int(page.url.rsplit("/", 1)[1])


def test_an_upload_cut_off_mid_way_resumes_and_completes(browser: Browser, system: System, tmp_path: Path) -> None:
    data = long_essay(tmp_path / "essay.txt")
    page = log_in(browser, system.url, STUDENT, system.password(STUDENT))
    page.goto(f"/assignments/{system.assignment_id}")
    seen: list[tuple[str, str | None]] = []
    cut: list[str] = []

    def network(route: Route) -> None:
        request = route.request
        seen.append((request.method, request.headers.get("upload-offset")))
        if request.method == "PATCH" and request.headers.get("upload-offset") != "0" and not cut:
            cut.append(request.headers["upload-offset"])
            route.abort("connectionreset")  # the wifi drops in the middle of the upload
            return
        route.continue_()

    page.route(re.compile(r"/api/assignments/\d+/uploads"), network)
    page.route(re.compile(r"/api/assignments/\d+/uploads/\w+"), network)
    choose_and_upload(page, tmp_path / "essay.txt")

    submission_id = submission_id_of(page)

    assert cut == [str(CHUNK)]
    patches = [offset for method, offset in seen if method == "PATCH"]
    assert patches == ["0", str(CHUNK), str(CHUNK), str(2 * CHUNK)]  # the cut chunk sent again, nothing more
    assert ("HEAD", None) in seen[seen.index(("PATCH", str(CHUNK))) :]  # it asked where to go on from
    assert stored_sha256(system, submission_id) == hashlib.sha256(data).hexdigest()
    assert page.evaluate("Object.keys(localStorage).filter((k) => k.startsWith('handin-tus:')).length") == 0
    page.context.close()


def test_after_a_reload_the_same_file_carries_on_from_the_last_byte(
    browser: Browser, system: System, tmp_path: Path
) -> None:
    data = long_essay(tmp_path / "thesis.txt")
    page = log_in(browser, system.url, OTHER, system.password(OTHER))
    page.goto(f"/assignments/{system.assignment_id}")

    def offline_after_first_chunk(route: Route) -> None:
        if route.request.method == "PATCH" and route.request.headers.get("upload-offset") != "0":
            route.abort("internetdisconnected")  # the lid closes after the first chunk
            return
        route.continue_()

    page.route(re.compile(r"/api/assignments/\d+/uploads/\w+"), offline_after_first_chunk)
    with page.expect_request(lambda r: r.method == "PATCH" and r.headers.get("upload-offset") == str(CHUNK)):
        choose_and_upload(page, tmp_path / "thesis.txt")
    page.reload()  # the student comes back later: same page, same file chosen again
    page.unroute(re.compile(r"/api/assignments/\d+/uploads/\w+"))  # and the network is back
    offsets: list[str] = []
    page.on("request", lambda r: offsets.append(r.headers.get("upload-offset", "")) if r.method == "PATCH" else None)
    choose_and_upload(page, tmp_path / "thesis.txt")
    expect(page.locator("#upload-status")).not_to_have_text("")

    submission_id = submission_id_of(page)

    assert offsets == [str(CHUNK), str(2 * CHUNK)]  # nothing sent twice, nothing from byte 0
    assert stored_sha256(system, submission_id) == hashlib.sha256(data).hexdigest()
    page.context.close()
