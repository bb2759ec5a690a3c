"""Reading submissions back: status with steps, events after a seq, topic gap fetch, file and thumbnail."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from urllib.parse import quote

import httpx
from redis.asyncio import Redis
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.main import create_app
from core import keys
from core.clock import utcnow
from core.db import transaction
from core.events import EventBatch
from core.models import Submission, SubmissionStep
from core.pipeline import STEP_NAMES
from core.settings import Settings
from core.storage import Area, make_storage
from tests.fixtures.app import World, login, same_origin
from tests.fixtures.s3 import s3_object_keys, s3_storage_settings

Login = Callable[[str], Awaitable[httpx.AsyncClient]]
PDF = b"%PDF-1.4\n" + b"%% page one\n" * 100


async def upload(http: httpx.AsyncClient, assignment_id: int, name: str = "essay.pdf", data: bytes = PDF) -> int:
    answer = await http.post(f"/api/assignments/{assignment_id}/submissions", files={"file": (name, data)})
    assert answer.status_code == 202, answer.text
    return int(answer.json()["id"])


async def test_owner_and_course_staff_see_it_others_get_404(as_user: Login, world: World) -> None:
    submission_id = await upload(await as_user("student"), world.assignment_id)
    for who in ("student", "staff"):
        view = (await (await as_user(who)).get(f"/api/submissions/{submission_id}")).json()
        assert view["id"] == submission_id and view["status"] == "processing"
        assert view["topic"] == f"submission.{submission_id}" and view["seq"] == 1
        assert [step["step"] for step in view["steps"]] == list(STEP_NAMES)
        scan = view["steps"][0]
        assert scan["state"] == "queued" and scan["queued_at"] and scan["attempts"] == 0
        assert scan["started_at"] is None and scan["result"] == {} and scan["error"] is None
    for who in ("student2", "outsider", "other_staff"):
        answer = await (await as_user(who)).get(f"/api/submissions/{submission_id}")
        assert answer.status_code == 404
        assert answer.json()["detail"] == "There is no such submission, or it is not yours to see."
    missing = await (await as_user("student")).get("/api/submissions/987654")
    assert missing.status_code == 404 and missing.json() == answer.json()  # same answer: ids do not leak


async def test_events_after_seq(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    student = await as_user("student")
    submission_id = await upload(student, world.assignment_id)
    topic = keys.submission_topic(submission_id)
    async with transaction(sessions) as session:
        batch = EventBatch(session)
        await batch.emit(topic, "step.started", {"step": "scan"})
        await batch.emit(topic, "step.succeeded", {"step": "scan", "result": "clean"})
    everything = (await student.get(f"/api/submissions/{submission_id}/events")).json()
    assert [(e["seq"], e["type"]) for e in everything["events"]] == [
        (1, "submission.received"),
        (2, "step.started"),
        (3, "step.succeeded"),
    ]
    after = (await student.get(f"/api/submissions/{submission_id}/events", params={"after": 2})).json()
    assert after["events"] == [everything["events"][2]]
    assert set(after["events"][0]) == {"seq", "topic", "type", "at", "data"}
    assert (await (await as_user("student2")).get(f"/api/submissions/{submission_id}/events")).status_code == 404
    # The same through the generic gap fetch, which follows the topic rules.
    generic = await student.get(f"/api/topics/{topic}/events", params={"after": 1})
    assert [e["seq"] for e in generic.json()["events"]] == [2, 3]
    assert (await (await as_user("student2")).get(f"/api/topics/{topic}/events")).status_code == 403


async def test_topic_rules_for_the_gap_fetch(as_user: Login, world: World) -> None:
    student, staff = await as_user("student"), await as_user("staff")
    assert (await student.get(f"/api/topics/user.{world.users['student']}/events")).status_code == 200
    assert (await student.get(f"/api/topics/user.{world.users['staff']}/events")).status_code == 403
    staff_topic = f"/api/topics/course.{world.course_id}.staff/events"
    assert (await student.get(staff_topic)).status_code == 403
    assert (await (await as_user("other_staff")).get(staff_topic)).status_code == 403
    await upload(student, world.assignment_id)
    dashboard = (await staff.get(staff_topic)).json()
    assert [e["type"] for e in dashboard["events"]] == ["submission.arrived"]
    assert (await student.get("/api/topics/not-a-topic/events")).status_code == 403


async def test_download_with_unicode_name(as_user: Login, world: World, settings: Settings) -> None:
    student = await as_user("student")
    submission_id = await upload(student, world.assignment_id, name="Überblick \u2013 résumé.pdf")
    for who in ("student", "staff"):
        answer = await (await as_user(who)).get(f"/api/submissions/{submission_id}/file")
        assert answer.status_code == 200 and answer.content == PDF
        assert answer.headers["content-type"] == "application/pdf"
        assert answer.headers["content-disposition"] == (
            "attachment; filename=\"_berblick _ r_sum_.pdf\"; filename*=UTF-8''"
            + quote("Überblick \u2013 résumé.pdf", safe="")
        )
    assert (await (await as_user("student2")).get(f"/api/submissions/{submission_id}/file")).status_code == 404


async def test_download_after_the_store_step_moved_it(
    as_user: Login, world: World, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    student = await as_user("student")
    submission_id = await upload(student, world.assignment_id)
    async with sessions() as session:
        key = (await session.get(Submission, submission_id)).storage_key  # type: ignore[union-attr]
    storage = make_storage(settings)
    await storage.move(Area.incoming, Area.store, key)
    answer = await student.get(f"/api/submissions/{submission_id}/file")
    assert answer.status_code == 200 and answer.content == PDF


async def test_thumbnail_404_until_ready(
    as_user: Login, world: World, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    student = await as_user("student")
    submission_id = await upload(student, world.assignment_id)
    pending = await student.get(f"/api/submissions/{submission_id}/thumbnail")
    assert pending.status_code == 404 and pending.json()["detail"] == "The thumbnail is not ready yet."
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64
    await make_storage(settings).put_bytes(Area.thumbnails, f"{world.assignment_id}/thumb", png)
    async with transaction(sessions) as session:
        await session.execute(
            update(Submission)
            .where(Submission.id == submission_id)
            .values(thumbnail_key=f"{world.assignment_id}/thumb")
        )
        await session.execute(
            update(SubmissionStep)
            .where(SubmissionStep.submission_id == submission_id, SubmissionStep.step == "thumbnail")
            .values(state="succeeded", finished_at=utcnow())
        )
    ready = await student.get(f"/api/submissions/{submission_id}/thumbnail")
    assert ready.status_code == 200 and ready.content == png and ready.headers["content-type"] == "image/png"
    view = (await student.get(f"/api/submissions/{submission_id}")).json()
    assert view["thumbnail_url"] == f"/api/submissions/{submission_id}/thumbnail"
    assert (await (await as_user("outsider")).get(f"/api/submissions/{submission_id}/thumbnail")).status_code == 404


async def test_intake_on_the_s3_backend(
    world: World, settings: Settings, redis: Redis, s3_endpoint: str, s3_bucket: str
) -> None:
    """The same upload and download with the store on an S3-compatible server (moto)."""
    app = create_app(
        settings.model_copy(
            update={"storage": settings.storage.model_copy(update=s3_storage_settings(s3_endpoint, s3_bucket))}
        )
    )
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://handin.test", event_hooks=same_origin(settings)
        ) as http:
            await login(http, "student")
            submission_id = await upload(http, world.assignment_id)
            download = await http.get(f"/api/submissions/{submission_id}/file")
    assert download.status_code == 200 and download.content == PDF
    objects = s3_object_keys(s3_endpoint, s3_bucket)
    assert len(objects) == 1 and objects[0].startswith(f"incoming/{world.assignment_id}/")
