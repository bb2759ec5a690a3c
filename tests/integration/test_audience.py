"""A copied essay through the real pipeline: the copier learns nothing about whom they copied.

Student A submits an essay, student B submits the same text; the built-in
similarity check matches B's submission to A's. Staff see the match (A's
user and submission, the spans). Student B, through every channel they have
(each event recorded in the audit trail as B's audience sees it, the JSON
views, the topic catch-up, the pages, and a live WAMP session on the router),
never receives A's identifiers.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from typing import Any

import httpx
from sqlalchemy import select

from core import keys
from core.access import audience_for, principal_for
from core.audience import project_event
from core.events import Envelope
from core.models import Event, TopicSeq
from tests.fixtures.app import World
from tests.fixtures.pipeline import drain_pipeline
from tests.fixtures.router import RunningRouter, TicketSession, autobahn_session, close_autobahn
from tests.fixtures.router import World as WampWorld

WORDS = ["".join(random.Random(i).choices("abcdefghijklmnopqrstuvwxyz", k=3 + i % 8)) for i in range(600)]


def essay(seed: int, sentences: int = 60) -> bytes:
    rng = random.Random(seed)
    return "\n".join(" ".join(rng.choices(WORDS, k=12)).capitalize() + "." for _ in range(sentences)).encode()


class Inbox:
    """Events one WAMP subscription received, and a way to wait for a given seq."""

    def __init__(self) -> None:
        self.envelopes: list[dict[str, Any]] = []
        self.arrived = asyncio.Condition()

    async def __call__(self, envelope: dict[str, Any], **_kwargs: Any) -> None:
        async with self.arrived:
            self.envelopes.append(envelope)
            self.arrived.notify_all()

    async def wait_for(self, topic: str, seq: int) -> None:
        def seen() -> bool:
            return any(e["topic"] == topic and e["seq"] >= seq for e in self.envelopes)

        async with self.arrived:
            await asyncio.wait_for(self.arrived.wait_for(seen), 30)


class Leaks:
    """What of student A must never reach student B."""

    def __init__(self, user_id: int, submission_id: int, email: str, name: str) -> None:
        self.user_id, self.submission_id = user_id, submission_id
        self.texts = [email, keys.submission_topic(submission_id), f"/submissions/{submission_id}"]
        self.name = re.compile(rf"\b{re.escape(name)}\b")

    def in_text(self, text: str) -> list[str]:
        found = [f"text {t!r}" for t in self.texts if t in text]
        return found + ([f"name {self.name.pattern}"] if self.name.search(text) else [])

    def in_json(self, value: Any, path: str = "$") -> list[str]:
        found: list[str] = []
        if isinstance(value, dict):
            for key, inner in value.items():
                here = f"{path}.{key}"
                if key in ("matches", "spans"):
                    found.append(here)
                if key in ("user_id", "author_id") and inner == self.user_id:
                    found.append(f"{here}={inner}")
                if key == "submission_id" and inner == self.submission_id:
                    found.append(f"{here}={inner}")
                found += self.in_json(inner, here)
        elif isinstance(value, list):
            for index, inner in enumerate(value):
                found += self.in_json(inner, f"{path}[{index}]")
        elif isinstance(value, str):
            found += [f"{path}: {leak}" for leak in self.in_text(value)]
        return found


async def upload(http: httpx.AsyncClient, world: World, content: bytes) -> int:
    answer = await http.post(
        f"/api/assignments/{world.assignment_id}/submissions", files={"file": ("essay.txt", content, "text/plain")}
    )
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


async def last_seq(sessions: Any, topic: str) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(TopicSeq.seq).where(TopicSeq.topic == topic)) or 0)


async def test_the_copying_student_never_learns_whom_they_copied(
    as_user: Any,
    world: World,
    sessions: Any,
    run_burst: Any,
    wamp_router: RunningRouter,
    wamp_world: WampWorld,
) -> None:
    a_user, b_user, staff_user = world.users["student"], world.users["student2"], world.users["staff"]
    student_a, student_b, staff = await as_user("student"), await as_user("student2"), await as_user("staff")
    text = essay(7)
    a_sub = await upload(student_a, world, text)
    await drain_pipeline(run_burst)

    b_sub = await upload(student_b, world, text)
    b_topics = [
        keys.submission_topic(b_sub),
        keys.user_topic(b_user),
        keys.assignment_topic(world.assignment_id),
        keys.course_topic(world.course_id),
    ]
    b_inbox, staff_inbox = Inbox(), Inbox()
    b_socket: TicketSession = await autobahn_session(wamp_router.url, await wamp_world.login(b_user))
    staff_socket: TicketSession = await autobahn_session(wamp_router.url, await wamp_world.login(staff_user))
    try:
        for topic in b_topics:
            await b_socket.subscribe(b_inbox, topic)
        await staff_socket.subscribe(staff_inbox, keys.submission_topic(b_sub))
        await drain_pipeline(run_burst)
        final = await last_seq(sessions, keys.submission_topic(b_sub))
        await b_inbox.wait_for(keys.submission_topic(b_sub), final)
        await staff_inbox.wait_for(keys.submission_topic(b_sub), final)
    finally:
        await close_autobahn(b_socket)
        await close_autobahn(staff_socket)

    # Staff see the match, so there is something to hide.
    staff_view = (await staff.get(f"/api/submissions/{b_sub}")).json()
    similarity = next(step for step in staff_view["steps"] if step["step"] == "similarity")
    assert similarity["state"] == "succeeded", similarity
    top = similarity["result"]["matches"][0]
    assert (top["user_id"], top["submission_id"]) == (a_user, a_sub) and top["spans"]
    live_for_staff = [e for e in staff_inbox.envelopes if e["type"] == "step.succeeded"]
    assert any(e["data"]["result"].get("matches") for e in live_for_staff if e["data"]["step"] == "similarity")

    leaks = Leaks(a_user, a_sub, World.email("student"), "Student")
    found: dict[str, list[str]] = {}

    def check(where: str, value: Any) -> None:
        if problems := leaks.in_json(value):
            found[where] = problems

    # Every event in the audit trail, as B's audience on its topic sees it.
    async with sessions() as session:
        b_principal = await principal_for(session, b_user)
        assert b_principal is not None
        rows = list(await session.scalars(select(Event).order_by(Event.id)))
        visible = 0
        for row in rows:
            audience = await audience_for(session, b_principal, row.topic)
            if audience is not None:
                visible += 1
                check(
                    f"audit {row.topic}#{row.seq} {row.type}",
                    project_event(Envelope.from_event(row).as_dict(), audience),
                )
    assert visible >= 10
    assert any(leaks.in_json(row.data) for row in rows if row.topic == keys.submission_topic(b_sub))

    # The JSON views and the topic catch-up.
    for path in (
        f"/api/submissions/{b_sub}",
        f"/api/submissions/{b_sub}/events",
        *(f"/api/topics/{topic}/events" for topic in b_topics),
    ):
        answer = await student_b.get(path)
        assert answer.status_code == 200, (path, answer.text)
        check(path, answer.json())
    assert (await student_b.get(f"/api/submissions/{a_sub}")).status_code == 404
    assert (await student_b.get(f"/api/topics/{keys.submission_topic(a_sub)}/events")).status_code == 403

    # The pages B sees.
    for path in (f"/submissions/{b_sub}", f"/assignments/{world.assignment_id}", "/courses"):
        answer = await student_b.get(path)
        assert answer.status_code == 200, (path, answer.status_code)
        if problems := leaks.in_text(answer.text):
            found[path] = problems

    # What reached B live over the router.
    assert any(e["type"] == "step.succeeded" and e["data"]["step"] == "similarity" for e in b_inbox.envelopes)
    for envelope in b_inbox.envelopes:
        check(f"wamp {envelope['topic']}#{envelope['seq']} {envelope['type']}", envelope)

    assert not found, json.dumps(found, indent=1)
