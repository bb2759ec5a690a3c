"""Live pages in headless Chromium against the whole system: one WebSocket per page, heard from its
first second; "offline" with a working "Retry now" when the router is gone; the dashboard's activity.

The router here runs with a 2 s handshake timeout (instead of 10 s), so a socket a page opened and
left idle is aborted by the router within the test, as it would be on any page after 10 s.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, WebSocket, expect
from redis.asyncio import Redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from core.events import EventBatch
from tests.browser.conftest import log_in
from tests.fixtures.system import System

pytestmark = pytest.mark.browser

STUDENT, STAFF = "student@handin.local", "staff@handin.local"
HANDSHAKE_TIMEOUT_SECONDS = 2
# Every text the connection indicator shows, from the first one (set before any page script runs).
RECORD_CONNECTION_TEXTS = """
window.__connectionTexts = [];
new MutationObserver(() => {
  const text = document.getElementById('connection')?.textContent;
  const seen = window.__connectionTexts;
  if (text !== undefined && seen[seen.length - 1] !== text) seen.push(text);
}).observe(document, { subtree: true, childList: true, characterData: true });
"""


@pytest.fixture(scope="module")
def live_system(system: System) -> System:
    system.env["HANDIN_ROUTER__HANDSHAKE_TIMEOUT_SECONDS"] = str(HANDSHAKE_TIMEOUT_SECONDS)
    system.kill_router()
    system.start_router()
    return system


def page_for(browser: Browser, system: System, email: str) -> Page:
    page = log_in(browser, system.url, email, system.password(email))
    page.add_init_script(RECORD_CONNECTION_TEXTS)
    return page


def emit(system: System, topic: str, type: str, data: dict[str, Any]) -> int:
    """An event as the system writes one: audit row, then Redis; returns its seq."""

    async def work(sessions: Any) -> int:
        async with sessions() as session, session.begin():
            batch = EventBatch(session)
            envelope = await batch.emit(topic, type, data)
        redis = Redis.from_url(system.settings.redis_url)
        try:
            await batch.publish(redis)
        finally:
            await redis.aclose()
        return envelope.seq

    return system.run(work)


def staff_topic(page: Page) -> str:
    topics = json.loads(page.locator("#dashboard").get_attribute("data-topics") or "[]")
    return next(t["topic"] for t in topics if t["topic"].endswith(".staff"))


def wait_for_handshake_timeout(system: System) -> None:
    """Open an idle socket now and wait until the router aborts it: every socket opened before it has
    passed its handshake timeout too."""
    with connect(f"ws://127.0.0.1:{system.router_port}/ws", subprotocols=["wamp.2.json"]) as idle:  # type: ignore[list-item]
        with pytest.raises(ConnectionClosed):
            while True:
                idle.recv(timeout=HANDSHAKE_TIMEOUT_SECONDS * 10)


def decision(*pools: tuple[str, int, int]) -> dict[str, Any]:
    return {
        "dry_run": False,
        "changed": [pool for pool, current, desired in pools if current != desired],
        "pools": [{"pool": pool, "current": current, "desired": desired} for pool, current, desired in pools],
    }


def test_a_page_opens_one_websocket_and_hears_from_its_first_second(browser: Browser, live_system: System) -> None:
    page = page_for(browser, live_system, STAFF)
    expect(page.locator("#connection")).to_have_text("Live")  # the page after logging in has its socket
    sockets: list[WebSocket] = []
    page.on("websocket", lambda socket: sockets.append(socket))
    page.goto("/staff/dashboard")  # three topics (course staff, fleet, the user's flashes) from two scripts
    connection = page.locator("#connection")
    expect(connection).to_have_text("Live")

    emit(live_system, staff_topic(page), "submission.arrived", {"submission_id": 424242, "late": False})
    expect(page.locator("#feed")).to_contain_text("Submission 424242 arrived")

    wait_for_handshake_timeout(live_system)
    expect(connection).to_have_text("Live")
    assert len(sockets) == 1, [s.url for s in sockets]
    assert not sockets[0].is_closed()
    texts = page.evaluate("window.__connectionTexts")
    assert not [t for t in texts if "reconnecting" in t.lower() or "offline" in t.lower()], texts
    emit(live_system, staff_topic(page), "submission.arrived", {"submission_id": 424243, "late": True})
    expect(page.locator("#feed")).to_contain_text("Submission 424243 arrived (late)")
    page.context.close()


def test_without_the_router_the_page_says_offline_and_retry_brings_it_back(
    browser: Browser, live_system: System
) -> None:
    page = page_for(browser, live_system, STUDENT)
    page.goto("/courses")
    connection = page.locator("#connection")
    expect(connection).to_have_text("Live")
    expect(connection).to_have_attribute("role", "status")
    expect(connection).to_have_attribute("aria-live", "polite")
    retry = page.get_by_role("button", name="Retry now")
    expect(retry).to_have_count(0)

    live_system.kill_router()
    try:
        expect(connection).to_have_text(re.compile(r"^Offline — retrying in \d+ s$"), timeout=30_000)
        assert any("reconnecting" in t for t in page.evaluate("window.__connectionTexts"))  # the attempts before
        expect(retry).to_be_visible()
        # From now on the page would wait an hour between attempts: only the button brings it back soon.
        page.evaluate("(() => { const o = window.handinLive.options; o.initialDelayMs = o.maxDelayMs = 3600000; })()")
        retry.click()  # the router is still down: this attempt fails too, and the page says so
        expect(connection).to_have_text(re.compile(r"^Offline — retrying in \d+ min$"), timeout=30_000)
    finally:
        live_system.start_router()
    retry.focus()
    page.keyboard.press("Enter")
    expect(connection).to_have_text("Live", timeout=15_000)
    expect(retry).to_be_hidden()
    page.context.close()


def test_the_dashboard_opens_with_recent_activity_and_lists_only_fleet_changes(
    browser: Browser, live_system: System
) -> None:
    page = page_for(browser, live_system, STAFF)
    page.goto("/staff/dashboard")
    topic = staff_topic(page)
    emit(live_system, topic, "submission.arrived", {"submission_id": 515151, "late": False})
    emit(live_system, "fleet", "autoscaler.decision", decision(("scan", 1, 1), ("store", 1, 1)))
    emit(live_system, "fleet", "autoscaler.decision", decision(("scan", 1, 3), ("store", 1, 1)))
    emit(live_system, "fleet", "autoscaler.decision", decision(("scan", 3, 3), ("store", 1, 1)))

    page.reload()  # opened after those events: they are shown at once, before anything new happens
    feed = page.locator("#feed")
    expect(feed).to_contain_text("Submission 515151 arrived")
    expect(feed).to_contain_text("Autoscaler: scan 1→3")
    expect(connection := page.locator("#connection")).to_have_text("Live")

    emit(live_system, "fleet", "autoscaler.decision", decision(("thumbnail", 1, 1)))  # nothing changes
    emit(live_system, "fleet", "autoscaler.decision", decision(("thumbnail", 1, 2)))
    expect(feed).to_contain_text("Autoscaler: thumbnail 1→2")
    marking = {"submission_id": 515151, "marker_id": 1, "since": None}
    emit(live_system, topic, "marking.state", {**marking, "state": "marking", "marker_name": "Ada Marker"})
    emit(live_system, topic, "marking.state", {**marking, "state": "queued", "marker_name": None})
    expect(feed).to_contain_text("Submission 515151 being marked by Ada Marker")
    expect(feed).to_contain_text("Submission 515151 back in the marking queue")
    items = feed.locator("li").all_inner_texts()
    assert not [item for item in items if "marking.state" in item], items
    assert not [item for item in items if re.search(r"(\d+)→\1\b", item)], items
    assert not [item for item in items if "store" in item], items
    assert sum("Autoscaler" in item for item in items) == 2, items
    assert connection.inner_text() == "Live"
    page.context.close()


def test_dashboard_axis_labels_stay_inside_their_chart(browser: Browser, live_system: System) -> None:
    page = page_for(browser, live_system, STAFF)
    page.goto("/staff/dashboard")
    expect(page.locator("#latency-plot svg")).to_be_visible()
    # The latency chart as it looks once steps take seconds: tick labels like "2000 ms".
    outside = page.evaluate(
        """async () => {
          const { barChart } = await import('/static/js/svgplot.js');
          const figure = document.getElementById('latency-plot');
          barChart(figure, {
            series: [{ name: 'p50', values: [1200, 80] }, { name: 'p95', values: [1900, 140] }],
            labels: ['similarity', 'thumbnail'], unit: ' ms', summary: 'test',
            markers: [{ index: 1, text: 'deadline: Essay on the history of everything' }],
          });
          const svg = figure.querySelector('svg');
          const width = svg.viewBox.baseVal.width;
          return [...svg.querySelectorAll('text')]
            .map((t) => ({ text: t.textContent, box: t.getBBox() }))
            .filter(({ box }) => box.x < 0 || box.x + box.width > width)
            .map(({ text }) => text);
        }"""
    )
    assert outside == []
    page.context.close()
