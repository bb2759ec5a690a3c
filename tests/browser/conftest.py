"""Headless Chromium (Debian's /usr/bin/chromium) driven by Playwright's sync API.

One browser per test module; each test opens its own contexts (cookie jars).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, sync_playwright

from tests.fixtures.chromium import CHROMIUM, CHROMIUM_ARGS

if not Path(CHROMIUM).exists():  # pragma: no cover - the test machine has it
    pytest.skip("Debian's chromium is not installed", allow_module_level=True)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def log_in(browser: Browser, base_url: str, email: str, password: str, **context_options: object) -> Page:
    """A fresh browser context (own cookies) logged in through the login page."""
    context: BrowserContext = browser.new_context(base_url=base_url, **context_options)  # type: ignore[arg-type]
    context.set_default_timeout(15_000)
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Email address").fill(email)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/courses")
    return page
