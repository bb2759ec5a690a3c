"""Who may call each route and subscribe to each topic: every rule written out, every one exercised.

The routes come from the app itself (``create_app().routes``) and the topic
kinds from core.keys: a route or topic kind without a rule here fails the
test, so a new endpoint cannot ship without someone deciding who may use it.

Roles: anonymous; the owner of a submission (a student); another student of
the course; staff of the course; staff of another course; removed staff (was
staff of the course, enrolment deleted). Requests go over HTTP (ASGI) with real
logins and the headers the pages send (same Origin, CSRF token); topics through
core.access.can_subscribe, and a sample over a real router WebSocket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from autobahn.wamp.exception import ApplicationError
from fastapi import FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import delete
from starlette.routing import BaseRoute, Mount, Route

from core import keys
from core.access import can_subscribe, principal_for
from core.clock import utcnow
from core.db import transaction
from core.events import EventBatch
from core.flash import FlashSpec, push_flash
from core.models import Enrolment, Extension
from core.settings import Settings
from tests.fixtures.app import World, login, make_user, same_origin
from tests.fixtures.pipeline import drain_pipeline
from tests.fixtures.router import Refused, RunningRouter, autobahn_session, close_autobahn
from tests.fixtures.router import World as WampWorld

ROLES = ("anonymous", "owner", "student", "staff", "other_staff", "removed_staff")
PUBLIC = dict.fromkeys(ROLES, 200)


def rule(anonymous: int, owner: int, student: int, staff: int, other_staff: int, removed_staff: int) -> dict[str, int]:
    return dict(zip(ROLES, (anonymous, owner, student, staff, other_staff, removed_staff), strict=True))


# (method, path) -> the status each role gets. 303 to /login for pages, 401 for the JSON API when
# anonymous; 404 (not 403) where saying "forbidden" would tell that the thing exists.
ROUTES: dict[tuple[str, str], dict[str, int]] = {
    ("GET", "/healthz"): PUBLIC,
    ("GET", "/readyz"): PUBLIC,
    # Development settings (as the tests run): in production these are on the internal listener only.
    ("GET", "/metrics"): PUBLIC,
    ("GET", "/api/openapi.json"): PUBLIC,
    ("GET", "/api/docs"): PUBLIC,
    ("GET", "/docs/oauth2-redirect"): PUBLIC,
    ("GET", "/static"): PUBLIC,
    ("GET", "/login"): PUBLIC,
    ("POST", "/api/login"): dict.fromkeys(ROLES, 401),  # an unknown account, whoever asks
    ("GET", "/api/me"): rule(401, 200, 200, 200, 200, 200),
    ("GET", "/api/ws-ticket"): rule(401, 200, 200, 200, 200, 200),
    ("GET", "/api/flashes"): rule(401, 200, 200, 200, 200, 200),
    ("POST", "/api/flashes/{flash_id}/confirm"): rule(401, 204, 404, 404, 404, 404),
    ("POST", "/api/assignments/{assignment_id}/submissions"): rule(401, 202, 202, 403, 403, 403),
    # Resumable uploads (tus): what the server speaks is public; an upload is its creator's alone.
    ("OPTIONS", "/api/assignments/{assignment_id}/uploads"): dict.fromkeys(ROLES, 204),
    ("POST", "/api/assignments/{assignment_id}/uploads"): rule(401, 201, 201, 403, 403, 403),
    ("PATCH", "/api/assignments/{assignment_id}/uploads/{upload_id}"): rule(401, 204, 404, 404, 404, 404),
    ("DELETE", "/api/assignments/{assignment_id}/uploads/{upload_id}"): rule(401, 204, 404, 404, 404, 404),
    ("GET", "/api/submissions/{submission_id}"): rule(401, 200, 404, 200, 404, 404),
    ("GET", "/api/submissions/{submission_id}/events"): rule(401, 200, 404, 200, 404, 404),
    ("GET", "/api/submissions/{submission_id}/file"): rule(401, 200, 404, 200, 404, 404),
    ("GET", "/api/submissions/{submission_id}/thumbnail"): rule(401, 200, 404, 200, 404, 404),
    ("GET", "/api/submissions/{submission_id}/receipt"): rule(401, 200, 404, 200, 404, 404),
    ("GET", "/api/submissions/{submission_id}/wait"): rule(401, 200, 404, 200, 404, 404),
    # Signed receipts are checked by anyone (an appeals panel has no login); the keys are public.
    ("POST", "/api/receipts/verify"): PUBLIC,
    ("GET", "/verify"): PUBLIC,
    ("GET", "/.well-known/handin-receipt-keys.json"): PUBLIC,
    ("GET", "/api/topics/{topic}/events"): rule(401, 200, 403, 200, 403, 403),
    ("PUT", "/api/submissions/{submission_id}/grade"): rule(401, 404, 404, 200, 404, 404),
    ("POST", "/api/assignments/{assignment_id}/release"): rule(401, 404, 404, 200, 404, 404),
    ("DELETE", "/api/assignments/{assignment_id}/release"): rule(401, 404, 404, 200, 404, 404),
    ("GET", "/api/staff/assignments/{assignment_id}/submissions"): rule(401, 404, 404, 200, 404, 404),
    ("GET", "/api/staff/dashboard"): rule(401, 404, 404, 200, 200, 404),
    ("POST", "/api/webhooks/similarity"): dict.fromkeys(ROLES, 401),  # signed by the provider, never a login
    # Signed by the admin system, never a login; off (503) without HANDIN_ADMIN__INBOUND_SECRET, as here.
    ("POST", "/api/admin/messages"): dict.fromkeys(ROLES, 503),
    ("GET", "/"): rule(303, 303, 303, 303, 303, 303),
    ("GET", "/courses"): rule(303, 200, 200, 200, 200, 200),
    ("GET", "/assignments/{assignment_id}"): rule(303, 200, 200, 303, 404, 404),
    ("GET", "/submissions/{submission_id}"): rule(303, 200, 404, 303, 404, 404),
    ("GET", "/staff"): rule(303, 404, 404, 200, 200, 404),
    ("GET", "/staff/dashboard"): rule(303, 404, 404, 200, 200, 404),
    ("GET", "/staff/courses/{course_id}/assignments/new"): rule(303, 404, 404, 200, 404, 404),
    ("POST", "/staff/courses/{course_id}/assignments/new"): rule(303, 404, 404, 303, 404, 404),
    ("GET", "/staff/assignments/{assignment_id}"): rule(303, 404, 404, 200, 404, 404),
    ("GET", "/staff/assignments/{assignment_id}/edit"): rule(303, 404, 404, 200, 404, 404),
    ("POST", "/staff/assignments/{assignment_id}/edit"): rule(303, 404, 404, 303, 404, 404),
    ("POST", "/staff/assignments/{assignment_id}/extensions"): rule(303, 404, 404, 303, 404, 404),
    ("POST", "/staff/assignments/{assignment_id}/extensions/{extension_id}/delete"): rule(303, 404, 404, 303, 404, 404),
    ("GET", "/staff/submissions/{submission_id}"): rule(303, 404, 404, 200, 404, 404),
    # Class messaging (the course page): its members read; its staff announce, hide and mute.
    ("GET", "/courses/{course_id}"): rule(303, 200, 200, 200, 404, 404),
    ("GET", "/api/chat/unread"): rule(401, 200, 200, 200, 200, 200),
    ("POST", "/api/courses/{course_id}/read"): rule(401, 200, 200, 200, 404, 404),
    ("POST", "/api/courses/{course_id}/announcements"): rule(401, 404, 404, 201, 404, 404),
    ("POST", "/api/courses/{course_id}/chat/{seq}/hide"): rule(401, 404, 404, 200, 404, 404),
    ("POST", "/api/courses/{course_id}/mutes"): rule(401, 404, 404, 200, 404, 404),
    # Marking claims: the course's staff only.
    ("POST", "/api/submissions/{submission_id}/claim"): rule(401, 404, 404, 200, 404, 404),
    ("DELETE", "/api/submissions/{submission_id}/claim"): rule(401, 404, 404, 200, 404, 404),
    ("GET", "/api/submissions/{submission_id}/marking"): rule(401, 200, 404, 200, 404, 404),
    # Chat moderation: the course's staff delete a message (once: it is gone after that).
    ("DELETE", "/api/courses/{course_id}/chat/{seq}"): rule(401, 404, 404, 204, 404, 404),
    ("POST", "/api/logout"): rule(200, 200, 200, 200, 200, 200),  # asked last: it ends the session
}

# Topic kind -> whether each role may subscribe (anonymous never gets a session at all).
TOPICS: dict[str, dict[str, bool]] = {
    "submission": {"owner": True, "student": False, "staff": True, "other_staff": False, "removed_staff": False},
    "assignment": {"owner": True, "student": True, "staff": True, "other_staff": False, "removed_staff": False},
    "user": {"owner": True, "student": False, "staff": False, "other_staff": False, "removed_staff": False},
    "course": {"owner": True, "student": True, "staff": True, "other_staff": False, "removed_staff": False},
    keys.COURSE_STAFF: {"owner": False, "student": False, "staff": True, "other_staff": False, "removed_staff": False},
    keys.FLEET_TOPIC: {"owner": False, "student": False, "staff": True, "other_staff": True, "removed_staff": False},
}
USERS = {"owner": "student", "student": "student2", "staff": "staff", "other_staff": "other_staff"}


def app_routes(routes: list[BaseRoute], prefix: str = "") -> Iterator[tuple[str, str]]:
    """(method, path) of every endpoint, included routers flattened; HEAD goes with GET."""
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:  # FastAPI's include_router keeps the router whole
            yield from app_routes(included.routes, prefix + route.include_context.prefix)  # type: ignore[attr-defined]
        elif isinstance(route, Mount):
            yield "GET", prefix + route.path
        elif isinstance(route, APIRoute | Route):
            for method in sorted(route.methods or ()):
                if method != "HEAD":
                    yield method, prefix + route.path


@dataclass
class Scene:
    world: World
    ids: dict[str, Any]
    users: dict[str, int]


@pytest.fixture
async def scene(
    world: World, sessions: Any, redis: Any, as_user: Any, run_burst: Any, settings: Settings
) -> AsyncIterator[Scene]:
    users = {role: world.users[who] for role, who in USERS.items()}
    users["removed_staff"] = await make_user(sessions, World.email("removed_staff"))
    async with transaction(sessions) as session:
        session.add(Enrolment(user_id=users["removed_staff"], course_id=world.course_id, role="staff"))
    owner = await as_user("student")
    answer = await owner.post(
        f"/api/assignments/{world.assignment_id}/submissions", files={"file": ("essay.txt", b"An essay. " * 50)}
    )
    assert answer.status_code == 202, answer.text
    submission_id = int(answer.json()["id"])
    upload = await owner.post(
        f"/api/assignments/{world.assignment_id}/uploads", headers={"Tus-Resumable": "1.0.0", "Upload-Length": "1000"}
    )
    assert upload.status_code == 201, upload.text
    await drain_pipeline(run_burst)  # so the file is stored and the thumbnail exists
    flash = await push_flash(sessions, redis, users["owner"], FlashSpec(text="hello"))
    assert flash is not None
    async with transaction(sessions) as session:
        extension = Extension(
            assignment_id=world.assignment_id,
            user_id=users["owner"],
            deadline=utcnow() + timedelta(days=3),
            cutoff_at=utcnow() + timedelta(days=4),
        )
        session.add(extension)
        await session.flush()
        extension_id = extension.id
        # Staff who left the course: the row is gone, the account and its logins are not.
        await session.execute(delete(Enrolment).where(Enrolment.user_id == users["removed_staff"]))
    async with transaction(sessions) as session:
        chat = await EventBatch(session).emit(
            keys.course_topic(world.course_id), "message", {"author_id": users["student"], "args": ["hi"]}
        )
    ids = {
        "seq": chat.seq,
        "assignment_id": world.assignment_id,
        "submission_id": submission_id,
        "course_id": world.course_id,
        "extension_id": extension_id,
        "flash_id": flash.id,
        "topic": keys.submission_topic(submission_id),
        "upload_id": upload.headers["Location"].rsplit("/", 1)[1],
    }
    yield Scene(world, ids, users)


def request_for(method: str, path: str, scene: Scene) -> dict[str, Any]:
    """A well-formed request: the answer is about rights, not about a malformed body."""
    later = utcnow() + timedelta(days=5)
    stamp = later.strftime("%Y-%m-%dT%H:%M")
    bodies: dict[tuple[str, str], dict[str, Any]] = {
        ("POST", "/api/login"): {"json": {"email": "nobody@test.handin", "password": "wrong"}},
        ("POST", "/api/flashes/{flash_id}/confirm"): {"json": {"reason": "seen"}},
        ("POST", "/api/assignments/{assignment_id}/submissions"): {"files": {"file": ("again.txt", b"Again. " * 20)}},
        ("PUT", "/api/submissions/{submission_id}/grade"): {"json": {"grade": "B", "feedback": "fine"}},
        ("POST", "/api/assignments/{assignment_id}/release"): {"json": {"at": (later).isoformat()}},
        ("POST", "/api/webhooks/similarity"): {"json": {"id": "x", "status": "COMPLETE"}},
        ("POST", "/api/assignments/{assignment_id}/uploads"): {
            "headers": {"Tus-Resumable": "1.0.0", "Upload-Length": "1000"}
        },
        ("PATCH", "/api/assignments/{assignment_id}/uploads/{upload_id}"): {
            "content": b"An essay. " * 10,
            "headers": {
                "Tus-Resumable": "1.0.0",
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
            },
        },
        ("DELETE", "/api/assignments/{assignment_id}/uploads/{upload_id}"): {"headers": {"Tus-Resumable": "1.0.0"}},
        ("POST", "/api/receipts/verify"): {"json": {"receipt": {"format": "handin-receipt/1"}}},
        ("POST", "/api/courses/{course_id}/read"): {"json": {"seq": 1}},
        ("POST", "/api/courses/{course_id}/announcements"): {"json": {"text": "Lecture moved"}},
        ("POST", "/api/courses/{course_id}/chat/{seq}/hide"): {"json": {"hidden": True}},
        ("POST", "/api/courses/{course_id}/mutes"): {"json": {"user_id": scene.users["student"], "minutes": 1}},
        ("POST", "/api/submissions/{submission_id}/claim"): {"json": {"take_over": True}},  # marked already
        ("POST", "/staff/assignments/{assignment_id}/extensions"): {
            "data": {"user_id": str(scene.users["student"]), "deadline": stamp, "cutoff_at": stamp, "tz_offset": "0"}
        },
    }
    form = {
        "title": "Another essay",
        "description": "",
        "late_policy": "",
        "accepted_types": ["text"],
        "opens_at": utcnow().strftime("%Y-%m-%dT%H:%M"),
        "deadline": stamp,
        "cutoff_at": stamp,
        "max_mb": "1",
        "max_attempts": "3",
        "tz_offset": "0",
    }
    bodies[("POST", "/staff/courses/{course_id}/assignments/new")] = {"data": form}
    bodies[("POST", "/staff/assignments/{assignment_id}/edit")] = {"data": form}
    url = "/static/js/live.js" if path == "/static" else path.format(**scene.ids)
    return {"method": method, "url": url, **bodies.get((method, path), {})}


async def test_every_route_has_a_rule() -> None:
    from api.main import create_app

    present = set(app_routes(create_app().routes))
    missing = sorted(present - ROUTES.keys())
    assert not missing, "\n".join(f"new route {m} {p} has no rule in the matrix" for m, p in missing)
    gone = sorted(ROUTES.keys() - present)
    assert not gone, f"rules for routes the app no longer has: {gone}"


async def test_every_topic_kind_has_a_rule() -> None:
    missing = sorted(set(keys.TOPIC_KINDS) - TOPICS.keys())
    assert not missing, "\n".join(f"new topic kind {kind} has no rule in the matrix" for kind in missing)


async def test_each_role_gets_its_answer_from_every_route(
    app: FastAPI, scene: Scene, settings: Settings, database_url: str
) -> None:
    clients: dict[str, httpx.AsyncClient] = {}
    for role in ROLES:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://handin.test", event_hooks=same_origin(settings)
        )
        clients[role] = http if role == "anonymous" else await login(http, USERS.get(role, role))
    wrong: list[str] = []
    try:
        # Logout last: it ends the session the other requests ride on.
        for (method, path), expected in sorted(ROUTES.items(), key=lambda item: item[0][1] == "/api/logout"):
            for role in ROLES:
                answer = await clients[role].request(**request_for(method, path, scene))
                if answer.status_code != expected[role]:
                    wrong.append(f"{method} {path} as {role}: {answer.status_code}, expected {expected[role]}")
                if answer.status_code == 303 and expected[role] == 303 and role == "anonymous":
                    if not answer.headers["location"].startswith("/login"):
                        wrong.append(f"{method} {path} as anonymous: redirected to {answer.headers['location']}")
    finally:
        for http in clients.values():
            await http.aclose()
    assert not wrong, "\n".join(wrong)


def topic_of(kind: str, scene: Scene) -> str:
    ids = scene.ids
    return {
        "submission": keys.submission_topic(ids["submission_id"]),
        "assignment": keys.assignment_topic(ids["assignment_id"]),
        "user": keys.user_topic(scene.users["owner"]),
        "course": keys.course_topic(ids["course_id"]),
        keys.COURSE_STAFF: keys.course_staff_topic(ids["course_id"]),
        keys.FLEET_TOPIC: keys.FLEET_TOPIC,
    }[kind]


async def test_each_role_may_subscribe_to_exactly_its_topics(scene: Scene, sessions: Any) -> None:
    wrong: list[str] = []
    async with sessions() as session:
        for role, user_id in scene.users.items():
            principal = await principal_for(session, user_id)
            assert principal is not None
            for kind, expected in TOPICS.items():
                topic = topic_of(kind, scene)
                if await can_subscribe(session, principal, topic) != expected[role]:
                    wrong.append(f"{topic} as {role}: expected {'allowed' if expected[role] else 'refused'}")
                # Another spelling of the same id is no channel at all, for anyone.
                for alias in (topic.replace(".", ".0", 1), topic.replace(".", ".+", 1)):
                    if alias != topic and await can_subscribe(session, principal, alias):
                        wrong.append(f"alias {alias} as {role}: allowed")
    assert not wrong, "\n".join(wrong)


async def test_the_router_answers_as_the_matrix_says(
    scene: Scene, wamp_router: RunningRouter, wamp_world: WampWorld
) -> None:
    with pytest.raises(Refused):
        await autobahn_session(wamp_router.url, "not-a-ticket")  # anonymous
    wrong: list[str] = []
    for role in ("owner", "student", "staff", "removed_staff"):
        client = await autobahn_session(wamp_router.url, await wamp_world.login(scene.users[role]))
        try:
            for kind in ("submission", "user", keys.COURSE_STAFF, keys.FLEET_TOPIC):
                topic = topic_of(kind, scene)
                try:
                    await client.subscribe(lambda *_: None, topic)
                    allowed = True
                except ApplicationError:
                    allowed = False
                if allowed != TOPICS[kind][role]:
                    wrong.append(f"{topic} as {role} over the router: {'allowed' if allowed else 'refused'}")
            alias = keys.submission_topic(scene.ids["submission_id"]).replace(".", ".0")
            with pytest.raises(ApplicationError):
                await client.subscribe(lambda *_: None, alias)
        finally:
            await close_autobahn(client)
    assert not wrong, "\n".join(wrong)
