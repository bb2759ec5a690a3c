"""Uploading a submission: every check a student can run into, against real databases, Redis and disk."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq.jobs import Job, JobStatus
from fastapi import FastAPI
from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api import record_upload
from core import keys
from core.clock import utcnow
from core.db import make_engine, make_sessionmaker, transaction
from core.events import event_arrays
from core.models import Event, Extension, Submission, SubmissionStep
from core.pipeline import STEP_NAMES
from core.settings import Settings
from tests.fixtures.app import PASSWORD, World, make_assignment, same_origin
from tests.fixtures.conditions import subscribed

Login = Callable[[str], Awaitable[httpx.AsyncClient]]
PDF = b"%PDF-1.7\n" + b"1 0 obj << /Type /Catalog >> endobj\n" * 50
LIMIT = 1024 * 1024  # the test assignment's max_bytes


def upload_url(assignment_id: int) -> str:
    return f"/api/assignments/{assignment_id}/submissions"


def incoming_files(settings: Settings) -> list[Path]:
    root = settings.storage.incoming_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def count(sessions: async_sessionmaker[AsyncSession], model: type) -> int:
    async with sessions() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def nothing_was_kept(sessions: async_sessionmaker[AsyncSession], settings: Settings) -> bool:
    return incoming_files(settings) == [] and await count(sessions, Submission) == 0


async def test_happy_path(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings, redis: Redis
) -> None:
    student = await as_user("student")
    dashboard = await subscribed(redis, keys.events_channel(keys.course_staff_topic(world.course_id)))

    answer = await student.post(upload_url(world.assignment_id), files={"file": ("essay.pdf", PDF, "application/pdf")})

    assert answer.status_code == 202, answer.text
    body = answer.json()
    submission_id = body["id"]
    assert body == {
        "id": submission_id,
        "topic": f"submission.{submission_id}",
        "status_url": f"/api/submissions/{submission_id}",
    }
    async with sessions() as session:
        submission = await session.get(Submission, submission_id)
        assert submission is not None
        steps = {s.step: s for s in await session.scalars(select(SubmissionStep))}
        events = list(await session.scalars(select(Event).order_by(Event.id)))
    assert (submission.attempt, submission.late, submission.status) == (1, False, "processing")
    assert submission.user_id == world.users["student"]
    assert submission.sha256 == hashlib.sha256(PDF).hexdigest() and submission.size == len(PDF)
    assert (submission.kind, submission.content_type, submission.original_filename) == (
        "pdf",
        "application/pdf",
        "essay.pdf",
    )
    stored = settings.storage.incoming_dir / submission.storage_key
    assert stored.read_bytes() == PDF
    assert set(steps) == set(STEP_NAMES)
    assert steps["scan"].state == "queued" and steps["scan"].queued_at is not None
    assert all(steps[name].state == "pending" for name in STEP_NAMES if name != "scan")
    received = [e for e in events if e.topic == f"submission.{submission_id}"]
    assert [(e.seq, e.type) for e in received] == [(1, "submission.received")]
    assert received[0].actor_id == world.users["student"]
    assert [e.type for e in events if e.topic == keys.course_staff_topic(world.course_id)] == ["submission.arrived"]
    # The first step waits in its own arq queue under its idempotent job id.
    assert await redis.zscore("handin:queue:scan", f"scan:{submission_id}") is not None
    job = Job(f"scan:{submission_id}", redis, _queue_name=keys.queue_name("scan"))
    assert await job.status() == JobStatus.queued
    # The staff dashboard heard about it, after commit. (Pub/sub spans Redis dbs: skip other runs' chatter.)
    heard = await next_envelope(dashboard, "submission.arrived", submission_id)
    assert heard["data"]["assignment_id"] == world.assignment_id


async def next_envelope(pubsub: PubSub, type: str, submission_id: int) -> dict[str, Any]:
    async with asyncio.timeout(5):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is None:
                continue
            envelope = json.loads(message["data"])
            if envelope["type"] == type and envelope["data"].get("submission_id") == submission_id:
                await pubsub.aclose()
                return dict(envelope)


async def test_requests_refused_before_any_file_is_kept(
    client: httpx.AsyncClient,
    as_user: Login,
    world: World,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    url = upload_url(world.assignment_id)
    assert (await client.post(url, files={"file": ("a.pdf", PDF)})).status_code == 401
    student = await as_user("student")
    missing = await student.post(url, files={"attachment": ("a.pdf", PDF)})
    assert missing.status_code == 422
    assert "field named 'file'" in missing.json()["detail"]
    bad_key = await student.post(url, files={"file": ("a.pdf", PDF)}, headers={"Idempotency-Key": "x" * 201})
    assert bad_key.status_code == 400
    not_multipart = await student.post(url, content=PDF, headers={"Content-Type": "application/pdf"})
    assert not_multipart.status_code == 400
    assert "multipart/form-data" in not_multipart.json()["detail"]
    assert await nothing_was_kept(sessions, settings)


async def test_a_failure_while_recording_leaves_nothing_behind(
    app: FastAPI,
    world: World,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The submission, its steps and its events are one transaction; the landed file is removed too."""

    if settings.database_url.startswith("postgresql"):
        # One statement writes all three: an event the database refuses (its data is not JSON)
        # fails it after the submission and step rows were inserted.
        def unreadable(staged: Any) -> dict[str, list[Any]]:
            arrays = event_arrays(staged)
            return {**arrays, "datas": ["{not json" for _ in arrays["datas"]]}

        monkeypatch.setattr("api.record_upload.event_arrays", unreadable)
    else:

        async def broken(*args: Any, **kwargs: Any) -> None:
            raise RuntimeError("event store unavailable")

        # The events are written last, as the transaction commits: failing there must undo the rest.
        monkeypatch.setattr("core.events.write_events", broken)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://handin.test", event_hooks=same_origin(settings)
    ) as http:
        await http.post("/api/login", json={"email": World.email("student"), "password": PASSWORD})
        answer = await http.post(upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)})
    assert answer.status_code == 500
    assert await nothing_was_kept(sessions, settings)
    assert await count(sessions, SubmissionStep) == 0
    assert await count(sessions, Event) == 0


@pytest.mark.parametrize(
    ("filename", "data", "status", "detail"),
    [
        # Larger than the limit by Content-Length alone: refused before the body is read.
        ("big.pdf", PDF + b"0" * (LIMIT + 1), 413, "The file is larger than this assignment's limit of 1 MB."),
        ("empty.pdf", b"", 422, "The file is empty."),
    ],
    ids=["oversized-by-content-length", "empty-file"],
)
async def test_a_refused_file_is_answered_with_the_reason_and_not_kept(
    filename: str,
    data: bytes,
    status: int,
    detail: str,
    as_user: Login,
    world: World,
    sessions: async_sessionmaker[AsyncSession],
    settings: Settings,
) -> None:
    student = await as_user("student")
    answer = await student.post(upload_url(world.assignment_id), files={"file": (filename, data, "application/pdf")})
    assert answer.status_code == status
    assert answer.json()["detail"] == detail
    assert await nothing_was_kept(sessions, settings)


async def test_just_over_the_limit_is_refused_while_streaming(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """Within the multipart allowance the Content-Length passes; the byte count while streaming catches it."""
    student = await as_user("student")
    data = PDF + b"0" * (LIMIT - len(PDF) + 1)
    answer = await student.post(upload_url(world.assignment_id), files={"file": ("big.pdf", data, "application/pdf")})
    assert answer.status_code == 413
    assert await nothing_was_kept(sessions, settings)
    exactly = PDF + b"0" * (LIMIT - len(PDF))
    answer = await student.post(upload_url(world.assignment_id), files={"file": ("ok.pdf", exactly, "application/pdf")})
    assert answer.status_code == 202


async def test_oversized_chunked_body_is_refused_while_streaming(
    live_server: str, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """A real server, a body without Content-Length: the 413 comes before the body ends, nothing is kept."""
    boundary = "handinboundary42"
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.pdf"\r\n'
            "Content-Type: application/pdf\r\n\r\n"
        ).encode()
        yield PDF
        for _ in range(3 * LIMIT // 65536):
            sent += 65536
            yield b"0" * 65536
        yield f"\r\n--{boundary}--\r\n".encode()

    async with httpx.AsyncClient(base_url=live_server, timeout=20, event_hooks=same_origin(settings)) as http:
        await http.post("/api/login", json={"email": World.email("student"), "password": PASSWORD})
        answer = await http.post(
            upload_url(world.assignment_id),
            content=body(),
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
    assert "content-length" not in answer.request.headers
    assert answer.request.headers["transfer-encoding"] == "chunked"
    assert answer.status_code == 413, answer.text
    assert await nothing_was_kept(sessions, settings)


async def test_executable_named_pdf_is_refused_by_content(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    student = await as_user("student")
    elf = b"\x7fELF\x02\x01\x01\x00" + b"\x00" * 56 + bytes(range(256)) * 8
    answer = await student.post(upload_url(world.assignment_id), files={"file": ("essay.pdf", elf, "application/pdf")})
    assert answer.status_code == 415
    detail = answer.json()["detail"]
    assert "not accepted" in detail and "PDF" in detail and "plain text" in detail and "Word (DOCX)" in detail
    assert await nothing_was_kept(sessions, settings)


async def test_text_that_turns_binary_past_the_sniffed_prefix(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    student = await as_user("student")
    data = b"all text here\n" * 10_000 + b"\x00\x01\x02binary tail"
    answer = await student.post(upload_url(world.assignment_id), files={"file": ("notes.txt", data, "text/plain")})
    assert answer.status_code == 415
    assert await nothing_was_kept(sessions, settings)


async def test_kind_not_accepted_by_this_assignment(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    pdf_only = await make_assignment(sessions, world.course_id, accepted_types=["pdf"])
    student = await as_user("student")
    answer = await student.post(upload_url(pdf_only), files={"file": ("notes.txt", b"just words\n", "text/plain")})
    assert answer.status_code == 415
    assert answer.json()["detail"] == "This file type is not accepted (it is a text file). Accepted: PDF."


HOSTILE_NAMES = [
    ("../../../etc/passwd.pdf", "passwd.pdf"),
    ("..\\..\\boot.ini.pdf", "boot.ini.pdf"),
    ('quote"and\r\nnewline.pdf', "quote_and newline.pdf"),
    ("a" * 1000 + ".pdf", "a" * 251 + ".pdf"),
    ("..", "submission"),
]


async def test_hostile_filenames_are_sanitised_and_never_used_as_keys(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    assignment = await make_assignment(sessions, world.course_id, max_attempts=len(HOSTILE_NAMES))
    student = await as_user("student")
    for hostile, expected in HOSTILE_NAMES:
        answer = await student.post(upload_url(assignment), files={"file": (hostile, PDF, "application/pdf")})
        assert answer.status_code == 202, answer.text
        async with sessions() as session:
            submission = await session.get(Submission, answer.json()["id"])
        assert submission is not None
        assert submission.original_filename == expected
        assert re.fullmatch(rf"{assignment}/[0-9a-f]{{32}}", submission.storage_key)
        assert (settings.storage.incoming_dir / submission.storage_key).read_bytes() == PDF
    assert len(incoming_files(settings)) == len(HOSTILE_NAMES)


async def test_raw_control_bytes_in_a_filename(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    """A hostile client (not a browser) sends control characters and a right-to-left override unescaped."""
    student = await as_user("student")
    name = "evil\x00\x1b[2J\x7f\tname\u202efdp.pdf".encode()
    body = (
        b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="'
        + name
        + b'"\r\n\r\n'
        + PDF
        + b"\r\n--b0undary--\r\n"
    )
    answer = await student.post(
        upload_url(world.assignment_id),
        content=body,
        headers={"Content-Type": "multipart/form-data; boundary=b0undary"},
    )
    assert answer.status_code == 202, answer.text
    async with sessions() as session:
        submission = await session.get(Submission, answer.json()["id"])
    assert submission is not None and submission.original_filename == "evil[2J namefdp.pdf"


async def test_who_may_submit(as_user: Login, world: World) -> None:
    for who in ("outsider", "staff"):
        answer = await (await as_user(who)).post(upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)})
        assert answer.status_code == 403
        assert answer.json()["detail"].startswith("You are not enrolled as a student")
    answer = await (await as_user("student")).post(upload_url(999_999), files={"file": ("a.pdf", PDF)})
    assert answer.status_code == 404


async def test_before_open(as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession]) -> None:
    now = utcnow()
    later = await make_assignment(
        sessions, world.course_id, opens_at=now + timedelta(hours=1), deadline=now + timedelta(days=1)
    )
    answer = await (await as_user("student")).post(upload_url(later), files={"file": ("a.pdf", PDF)})
    assert answer.status_code == 403
    assert answer.json()["detail"].startswith("This assignment opens at ")


async def test_after_deadline_is_late_and_after_cutoff_is_refused(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = utcnow()
    past_deadline = await make_assignment(
        sessions, world.course_id, deadline=now - timedelta(minutes=1), cutoff_at=now + timedelta(hours=1)
    )
    closed = await make_assignment(
        sessions, world.course_id, deadline=now - timedelta(hours=2), cutoff_at=now - timedelta(hours=1)
    )
    student = await as_user("student")
    late = await student.post(upload_url(past_deadline), files={"file": ("a.pdf", PDF)})
    assert late.status_code == 202
    async with sessions() as session:
        assert (await session.get(Submission, late.json()["id"])).late is True  # type: ignore[union-attr]
    refused = await student.post(upload_url(closed), files={"file": ("a.pdf", PDF)})
    assert refused.status_code == 403
    assert "cut-off for this assignment passed" in refused.json()["detail"]
    assert len(incoming_files(settings)) == 1


async def test_extension_is_honoured(as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession]) -> None:
    now = utcnow()
    closed = await make_assignment(
        sessions, world.course_id, deadline=now - timedelta(hours=2), cutoff_at=now - timedelta(hours=1)
    )
    async with transaction(sessions) as session:
        session.add(
            Extension(
                assignment_id=closed,
                user_id=world.users["student"],
                deadline=now + timedelta(days=1),
                cutoff_at=now + timedelta(days=2),
            )
        )
    answer = await (await as_user("student")).post(upload_url(closed), files={"file": ("a.pdf", PDF)})
    assert answer.status_code == 202
    async with sessions() as session:
        assert (await session.get(Submission, answer.json()["id"])).late is False  # type: ignore[union-attr]
    # The extension is personal: a classmate is still refused.
    other = await (await as_user("student2")).post(upload_url(closed), files={"file": ("a.pdf", PDF)})
    assert other.status_code == 403


async def test_attempts_used_up(as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession]) -> None:
    twice = await make_assignment(sessions, world.course_id, max_attempts=2)
    student = await as_user("student")
    attempts = [await student.post(upload_url(twice), files={"file": ("a.pdf", PDF)}) for _ in range(3)]
    assert [a.status_code for a in attempts] == [202, 202, 409]
    assert attempts[2].json()["detail"] == "You have used all 2 attempts for this assignment."
    async with sessions() as session:
        numbers = sorted(await session.scalars(select(Submission.attempt).where(Submission.assignment_id == twice)))
    assert numbers == [1, 2]


async def test_retry_with_the_same_idempotency_key_returns_the_original(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    student = await as_user("student")
    headers = {"Idempotency-Key": "upload-7f3a"}
    first = await student.post(upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)}, headers=headers)
    again = await student.post(upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)}, headers=headers)
    assert first.status_code == again.status_code == 202
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert await count(sessions, Submission) == 1
    assert len(incoming_files(settings)) == 1
    # Another key is another submission; another student's same key is theirs alone.
    other = await student.post(
        upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)}, headers={"Idempotency-Key": "upload-8000"}
    )
    classmate = await (await as_user("student2")).post(
        upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)}, headers=headers
    )
    assert len({first.json()["id"], other.json()["id"], classmate.json()["id"]}) == 3


async def test_concurrent_uploads_with_one_idempotency_key_make_one_submission(
    app: FastAPI, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    clients = [
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://t", event_hooks=same_origin(settings)
        )
        for _ in range(4)
    ]
    try:
        for http in clients:
            await http.post("/api/login", json={"email": World.email("student"), "password": PASSWORD})
        answers = await asyncio.gather(
            *(
                http.post(
                    upload_url(world.assignment_id),
                    files={"file": ("a.pdf", PDF)},
                    headers={"Idempotency-Key": "same-key"},
                )
                for http in clients
            )
        )
    finally:
        for http in clients:
            await http.aclose()
    assert [a.status_code for a in answers] == [202] * 4
    assert len({a.json()["id"] for a in answers}) == 1
    assert await count(sessions, Submission) == 1
    assert len(incoming_files(settings)) == 1


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_an_attempt_number_taken_while_recording_is_counted_again(
    as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL records an upload in one statement with the attempt number its window check
    counted. Another upload that took the number meanwhile makes that statement write nothing;
    the upload is recorded as the next attempt, with its steps and events."""
    reserve = record_upload.reserve_submission_id

    async def reserve_after_another_upload(engine: Any) -> int:
        async with transaction(sessions) as session:
            session.add(
                Submission(
                    assignment_id=world.assignment_id,
                    user_id=world.users["student"],
                    attempt=1,
                    sha256="0" * 64,
                    size=1,
                    original_filename="other.pdf",
                    content_type="application/pdf",
                    kind="pdf",
                    storage_key="other",
                )
            )
        monkeypatch.setattr("api.intake.reserve_submission_id", reserve)
        return await reserve(engine)

    monkeypatch.setattr("api.intake.reserve_submission_id", reserve_after_another_upload)
    answer = await (await as_user("student")).post(upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)})

    assert answer.status_code == 202, answer.text
    submission_id = answer.json()["id"]
    async with sessions() as session:
        attempts = dict((await session.execute(select(Submission.storage_key, Submission.attempt))).tuples().all())
        steps = (await session.scalars(select(SubmissionStep.submission_id))).all()
        received = (await session.scalars(select(Event).where(Event.type == "submission.received"))).all()
    assert sorted(attempts.values()) == [1, 2] and attempts["other"] == 1
    assert steps == [submission_id] * len(STEP_NAMES)  # none left by the statement that lost
    assert [(event.topic, event.data["attempt"]) for event in received] == [(f"submission.{submission_id}", 2)]


async def test_upload_metrics(as_user: Login, world: World, client: httpx.AsyncClient) -> None:
    student = await as_user("student")
    await student.post(upload_url(world.assignment_id), files={"file": ("a.pdf", PDF)})
    await student.post(upload_url(world.assignment_id), files={"file": ("e.pdf", b"")})
    text = (await client.get("/metrics")).text
    assert 'handin_uploads_total{outcome="accepted",reason=""}' in text
    assert 'handin_uploads_total{outcome="refused",reason="empty"}' in text
    assert 'route="/api/assignments/{assignment_id}/submissions",status="202"' in text


async def test_every_database_connection_busy_is_a_503_to_retry_and_keeps_nothing(
    app: FastAPI, as_user: Login, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    """The api's pool waited its whole timeout for a connection: the student reads "try again", not a
    bare 500, with Retry-After; no file and no submission is left behind."""
    student = await as_user("student")
    busy = make_engine(settings.database_url, pool_size=1, max_overflow=0, pool_timeout=0.2)
    app.state.engine, app.state.sessions = busy, make_sessionmaker(busy)
    try:
        async with busy.connect():  # the pool's one connection, held by someone else
            answer = await student.post(upload_url(world.assignment_id), files={"file": ("essay.pdf", PDF)})
    finally:
        await busy.dispose()
    assert answer.status_code == 503, answer.text
    assert answer.headers["Retry-After"] == "5"
    assert "too busy" in answer.json()["detail"] and "try again" in answer.json()["detail"].lower()
    assert await nothing_was_kept(sessions, settings)
