"""Resumable uploads (tus 1.0) against a real uvicorn: cut connections, resumes, two tabs, expiry, refusals."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import uvicorn
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.main import create_app
from core.clock import utcnow
from core.db import transaction
from core.models import Assignment, Submission, Upload
from core.settings import Settings
from core.storage import Area, Storage, make_storage, new_partial_key
from core.uploads import expire_uploads
from tests.fixtures.app import World, login, make_assignment, same_origin
from tests.fixtures.s3 import make_s3_storage, s3_object_keys, s3_storage_settings
from tests.fixtures.workers import run_maintenance_burst
from tests.services import free_port
from workers.maintenance import maintenance_worker_settings

TUS = {"Tus-Resumable": "1.0.0"}
CHUNK = 256 * 1024


def essay(size: int, seed: int = 7) -> bytes:
    """A PDF-looking file of ``size`` bytes with content that differs everywhere (a misplaced chunk shows)."""
    rng = random.Random(seed)
    body = bytes(rng.getrandbits(8) for _ in range(size - 9))
    return b"%PDF-1.7\n" + body


def uploads_url(assignment_id: int) -> str:
    return f"/api/assignments/{assignment_id}/uploads"


def metadata(filename: str) -> str:
    return "filename " + base64.b64encode(filename.encode()).decode()


@pytest.fixture
async def tab(live_server: str, settings: Settings) -> AsyncIterator[Any]:
    """``await tab("student")``: a client of the live server logged in as that person (one browser tab)."""
    clients: list[httpx.AsyncClient] = []

    async def make(who: str) -> httpx.AsyncClient:
        http = httpx.AsyncClient(base_url=live_server, event_hooks=same_origin(settings), timeout=30)
        clients.append(http)
        return await login(http, who)

    yield make
    for http in clients:
        await http.aclose()


async def create(http: httpx.AsyncClient, assignment_id: int, length: int, name: str = "essay.pdf") -> httpx.Response:
    return await http.post(
        uploads_url(assignment_id), headers={**TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(name)}
    )


async def patch(http: httpx.AsyncClient, url: str, offset: int, data: bytes, **headers: str) -> httpx.Response:
    return await http.patch(
        url,
        content=data,
        headers={**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream", **headers},
    )


async def offset_of(http: httpx.AsyncClient, url: str) -> int:
    answer = await http.head(url, headers=TUS)
    assert answer.status_code == 200, answer.status_code
    assert answer.headers["Cache-Control"] == "no-store"
    return int(answer.headers["Upload-Offset"])


async def send_from(http: httpx.AsyncClient, url: str, data: bytes) -> httpx.Response:
    """What a client does after a drop: ask for the offset, send the rest in chunks; a 409 means ask again.

    A cut-off request may still hold the upload for a moment on the server, so a 409 is followed by
    another HEAD until the server has finished with it.
    """
    async with asyncio.timeout(30):
        while True:
            offset = await offset_of(http, url)
            answer = await patch(http, url, offset, data[offset : offset + CHUNK])
            if answer.status_code == 409:
                await asyncio.sleep(0.02)  # the cut request's handler is still writing; ask again
                continue
            assert answer.status_code == 204, answer.text
            if int(answer.headers["Upload-Offset"]) == len(data):
                return answer


async def cut_patch(
    base: str, http: httpx.AsyncClient, settings: Settings, path: str, offset: int, data: bytes, cut_at: int
) -> None:
    """A PATCH whose connection dies after ``cut_at`` bytes of the body (the laptop lid closes)."""
    parts = urlsplit(base)
    _reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    cookie = "; ".join(f"{name}={value}" for name, value in http.cookies.items())
    head = (
        f"PATCH {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nOrigin: {settings.public_url.rstrip('/')}\r\n"
        f"Cookie: {cookie}\r\nTus-Resumable: 1.0.0\r\nUpload-Offset: {offset}\r\n"
        f"Content-Type: application/offset+octet-stream\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    writer.write(head.encode() + data[:cut_at])
    await writer.drain()
    writer.transport.abort()


async def submission_of(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> Submission:
    async with sessions() as session:
        submission = await session.get(Submission, submission_id)
    assert submission is not None
    return submission


def incoming(settings: Settings) -> list[Path]:
    root = settings.storage.incoming_dir
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


async def test_cut_connections_resume_and_the_stored_file_is_the_original(
    tab: Any, live_server: str, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    data = essay(900_000)
    student = await tab("student")
    created = await create(student, world.assignment_id, len(data))
    assert created.status_code == 201, created.text
    url = created.headers["Location"]
    assert created.headers["Tus-Resumable"] == "1.0.0" and "Upload-Expires" in created.headers
    rng = random.Random(15)
    for _ in range(6):
        offset = await offset_of(student, url)
        rest = data[offset : offset + 2 * CHUNK]
        await cut_patch(live_server, student, settings, url, offset, rest, rng.randrange(1, len(rest)))
    done = await send_from(student, url, data)

    submission_id = int(done.headers["Handin-Submission-Id"])
    assert done.headers["Content-Location"] == f"/api/submissions/{submission_id}"
    submission = await submission_of(sessions, submission_id)
    assert submission.sha256 == hashlib.sha256(data).hexdigest() and submission.size == len(data)
    assert (settings.storage.incoming_dir / submission.storage_key).read_bytes() == data
    assert (submission.kind, submission.original_filename, submission.late) == ("pdf", "essay.pdf", False)
    # Asking again after completion names the same submission; no partial bytes are left behind.
    again = await student.head(url, headers=TUS)
    assert again.headers["Handin-Submission-Id"] == str(submission_id)
    assert incoming(settings) == [settings.storage.incoming_dir / submission.storage_key]
    status = await student.get(f"/api/submissions/{submission_id}")
    assert status.status_code == 200 and status.json()["sha256"] == submission.sha256


async def test_an_upload_started_before_the_cut_off_is_on_time_when_it_ends_after_it(
    tab: Any, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    data = essay(300_000)
    student = await tab("student")
    url = (await create(student, world.assignment_id, len(data))).headers["Location"]
    assert (await patch(student, url, 0, data[:CHUNK])).status_code == 204
    async with sessions() as session:
        started = (await session.scalars(select(Upload.created_at))).one()
    # Time passes: the deadline and the cut-off are now behind us (and after the upload began).
    async with transaction(sessions) as session:
        await session.execute(
            update(Assignment)
            .where(Assignment.id == world.assignment_id)
            .values(deadline=started + timedelta(microseconds=1), cutoff_at=started + timedelta(microseconds=2))
        )
    late_start = await create(student, world.assignment_id, len(data))
    assert late_start.status_code == 403 and "cut-off" in late_start.json()["detail"]

    done = await send_from(student, url, data)

    submission = await submission_of(sessions, int(done.headers["Handin-Submission-Id"]))
    assert submission.late is False
    assert submission.upload_started_at == started
    assert submission.sha256 == hashlib.sha256(data).hexdigest()


async def test_two_tabs_resuming_the_same_upload_do_not_corrupt_it(
    tab: Any, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    data = essay(600_000)
    first, second = await tab("student"), await tab("student")
    url = (await create(first, world.assignment_id, len(data))).headers["Location"]
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield data[: CHUNK // 2]
        await release.wait()
        yield data[CHUNK // 2 : CHUNK]

    writing = asyncio.create_task(
        first.patch(
            url,
            content=slow_body(),
            headers={
                **TUS,
                "Upload-Offset": "0",
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(CHUNK),
            },
        )
    )
    async with asyncio.timeout(10):
        while True:  # the first tab's request holds the upload
            async with sessions() as session:
                if await session.scalar(select(Upload.lock_token)) is not None:
                    break
            await asyncio.sleep(0.01)
    # The second tab resumes from the same offset meanwhile, with different bytes: refused, nothing written.
    clash = await patch(second, url, 0, b"%PDF-1.7\n" + b"X" * (CHUNK - 9))
    assert clash.status_code == 409
    release.set()
    assert (await writing).status_code == 204
    stale = await patch(second, url, 0, data[:CHUNK])  # the offset it saw is out of date now
    assert stale.status_code == 409 and stale.headers["Upload-Offset"] == str(CHUNK)

    done = await send_from(second, url, data)

    submission = await submission_of(sessions, int(done.headers["Handin-Submission-Id"]))
    assert submission.sha256 == hashlib.sha256(data).hexdigest()
    assert (settings.storage.incoming_dir / submission.storage_key).read_bytes() == data
    async with sessions() as session:
        assert len((await session.scalars(select(Submission))).all()) == 1


async def test_checksums_wrong_offsets_and_termination(
    tab: Any, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    data = essay(200_000)
    student = await tab("student")
    options = await student.options(uploads_url(world.assignment_id))
    assert options.status_code == 204
    assert "termination" in options.headers["Tus-Extension"] and options.headers["Tus-Checksum-Algorithm"] == "sha1"
    url = (await create(student, world.assignment_id, len(data))).headers["Location"]
    chunk = data[: CHUNK // 4]
    wrong = base64.b64encode(hashlib.sha1(b"something else").digest()).decode()
    assert (await patch(student, url, 0, chunk, **{"Upload-Checksum": f"sha1 {wrong}"})).status_code == 460
    assert await offset_of(student, url) == 0
    right = base64.b64encode(hashlib.sha1(chunk).digest()).decode()
    assert (await patch(student, url, 0, chunk, **{"Upload-Checksum": f"sha1 {right}"})).status_code == 204
    assert (await patch(student, url, 10, chunk)).status_code == 409
    no_version = await student.patch(
        url, content=b"x", headers={"Upload-Offset": str(len(chunk)), "Content-Type": "application/offset+octet-stream"}
    )
    assert no_version.status_code == 412
    # Somebody else's upload does not exist for them.
    other = await tab("student2")
    assert (await other.head(url, headers=TUS)).status_code == 404
    assert (await patch(other, url, len(chunk), b"x")).status_code == 404

    assert (await student.delete(url, headers=TUS)).status_code == 204
    assert (await student.head(url, headers=TUS)).status_code == 404
    assert incoming(settings) == []

    async with sessions() as session:
        assert (await session.scalars(select(Upload))).all() == []

    # A damaged chunk mid-way: refused, sent again, and the finished file's SHA-256 is still the original's
    # (this process's running hash was dropped with the damaged chunk, so completion reads the file).
    text = b"A resumable essay.\n" * 20_000
    url = (await create(student, world.assignment_id, len(text), "essay.txt")).headers["Location"]
    assert (await patch(student, url, 0, text[:CHUNK])).status_code == 204
    damaged = await patch(student, url, CHUNK, text[CHUNK:], **{"Upload-Checksum": f"sha1 {wrong}"})
    assert damaged.status_code == 460
    done = await send_from(student, url, text)
    submission = await submission_of(sessions, int(done.headers["Handin-Submission-Id"]))
    assert (submission.sha256, submission.kind) == (hashlib.sha256(text).hexdigest(), "text")


async def test_abandoned_uploads_expire_and_the_maintenance_worker_removes_them(
    tab: Any, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    storage = make_storage(settings)
    data = essay(400_000)
    student = await tab("student")
    created = await create(student, world.assignment_id, len(data))
    url = created.headers["Location"]
    assert (await patch(student, url, 0, data[:CHUNK])).status_code == 204
    kept = (await create(student, world.assignment_id, len(data))).headers["Location"]
    assert (await patch(student, kept, 0, data[:CHUNK])).status_code == 204
    assert len(incoming(settings)) == 2
    abandoned = url.rsplit("/", 1)[1]
    async with transaction(sessions) as session:
        await session.execute(
            update(Upload).where(Upload.id == abandoned).values(expires_at=utcnow() - timedelta(seconds=1))
        )
    assert (await student.head(url, headers=TUS)).status_code == 410
    assert (await patch(student, url, CHUNK, data[CHUNK : 2 * CHUNK])).status_code == 410

    # The maintenance worker as deployed, one burst: its expiry cron job runs at start-up.
    assert "expire_uploads" in {job.name for job in maintenance_worker_settings(settings).cron_jobs}
    await run_maintenance_burst(settings)

    assert (await student.head(url, headers=TUS)).status_code == 404
    assert len(incoming(settings)) == 1  # the other upload's bytes are untouched
    assert await offset_of(student, kept) == CHUNK
    assert await expire_uploads(sessions, storage) == 0


# Binary in the second chunk of three: the resumable upload is refused there, before the rest is sent.
TEXT_THEN_BINARY = b"An essay.\n" * 30_000 + b"\x00\x01binary" + b"More essay.\n" * 30_000


@pytest.mark.parametrize(
    ("case", "status"),
    [
        ("not_enrolled", 403),
        ("closed", 403),
        ("not_open", 403),
        ("attempts", 409),
        ("too_large", 413),
        ("empty", 422),
        ("wrong_type", 415),
        ("text_turns_binary", 415),
    ],
)
async def test_every_refusal_of_the_plain_upload_also_refuses_the_resumable_one(
    case: str, status: int, tab: Any, world: World, sessions: async_sessionmaker[AsyncSession], settings: Settings
) -> None:
    now = utcnow()
    data, who, assignment_id = essay(2000), "student", world.assignment_id
    if case == "not_enrolled":
        who = "outsider"
    elif case == "closed":
        assignment_id = await make_assignment(
            sessions, world.course_id, deadline=now - timedelta(hours=2), cutoff_at=now - timedelta(hours=1)
        )
    elif case == "not_open":
        assignment_id = await make_assignment(sessions, world.course_id, opens_at=now + timedelta(hours=1))
    elif case == "attempts":
        assignment_id = await make_assignment(sessions, world.course_id, max_attempts=1)
        first = await (await tab("student2")).post(  # somebody else's attempt does not count
            f"/api/assignments/{assignment_id}/submissions", files={"file": ("a.pdf", data)}
        )
        assert first.status_code == 202
        mine = await (await tab("student")).post(
            f"/api/assignments/{assignment_id}/submissions", files={"file": ("a.pdf", data)}
        )
        assert mine.status_code == 202
    elif case == "too_large":
        data = essay(1024 * 1024 + 1)
    elif case == "empty":
        data = b""
    elif case == "wrong_type":
        data = b"\x00\x01\x02 not a known kind of file" * 4000
    elif case == "text_turns_binary":
        data = TEXT_THEN_BINARY
    http = await tab(who)
    before = set(incoming(settings))

    plain = await http.post(f"/api/assignments/{assignment_id}/submissions", files={"file": ("f.pdf", data)})
    created = await create(http, assignment_id, len(data))
    if created.status_code == 201:  # the kind is known only once the first bytes arrive
        assert case in ("wrong_type", "text_turns_binary")
        url = created.headers["Location"]
        sent = httpx.Response(204)
        offset = 0
        while sent.status_code == 204 and offset < len(data):
            sent = await patch(http, url, offset, data[offset : offset + CHUNK])
            offset += CHUNK
        refused = sent
        if case == "text_turns_binary":
            assert offset < len(data)  # refused at the chunk that turned binary, not at the end
        assert (await http.head(url, headers=TUS)).status_code == 404  # the refused upload is gone
    else:
        refused = created

    assert plain.status_code == status, plain.text
    assert refused.status_code == status, refused.text
    assert refused.json()["detail"] == plain.json()["detail"]
    assert set(incoming(settings)) == before
    async with sessions() as session:
        assert (await session.scalars(select(Upload))).all() == []


@pytest.fixture(params=["local", "s3"])
async def partial_storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "local":
        yield make_storage(Settings(storage={"incoming_dir": tmp_path / "in", "root": tmp_path / "store"}))
    else:
        s3 = make_s3_storage(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))
        yield s3
        await s3.close()


async def pieces(data: bytes, size: int = 50_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def test_partial_objects_grow_resume_over_a_cut_off_request_and_finish_on_both_backends(
    partial_storage: Storage,
) -> None:
    data = essay(300_000)
    key = new_partial_key()
    digest = hashlib.sha256()
    assert await partial_storage.append_partial(key, 0, pieces(data[:100_000]), digest) == 100_000
    # A request that wrote bytes past the acknowledged offset and was then refused or cut off:
    await partial_storage.append_partial(key, 100_000, pieces(b"garbage" * 10_000))
    # ...is overwritten by the resume from the acknowledged offset.
    assert await partial_storage.append_partial(key, 100_000, pieces(data[100_000:]), digest) == len(data)
    assert await partial_storage.read_partial_prefix(key, len(data), 64) == data[:64]

    stored = await partial_storage.finish_partial(key, len(data), "9/finished", None)

    assert stored.sha256 == hashlib.sha256(data).hexdigest() == digest.hexdigest()
    assert b"".join([chunk async for chunk in partial_storage.open(Area.incoming, "9/finished")]) == data
    await partial_storage.delete_partial(key)  # nothing left to delete: no error


async def test_forged_requests_are_refused_like_any_other_change(
    tab: Any, live_server: str, world: World, sessions: async_sessionmaker[AsyncSession]
) -> None:
    student = await tab("student")
    url = (await create(student, world.assignment_id, 1000)).headers["Location"]
    no_token = await student.post(
        uploads_url(world.assignment_id), headers={**TUS, "Upload-Length": "1000", "X-CSRF-Token": ""}
    )
    assert no_token.status_code == 403 and "CSRF token" in no_token.json()["detail"]
    foreign = await patch(student, url, 0, b"%PDF-1.7\n", Origin="http://evil.example")
    assert foreign.status_code == 403
    assert (await student.delete(url, headers={**TUS, "X-CSRF-Token": "forged"})).status_code == 403
    assert await offset_of(student, url) == 0
    async with sessions() as session:
        assert len((await session.scalars(select(Upload))).all()) == 1


@contextlib.asynccontextmanager
async def serving(settings: Settings) -> AsyncIterator[str]:
    """A real uvicorn on these settings (the live_server fixture, for settings of the test's own)."""
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=free_port(), log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    async with asyncio.timeout(30):
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)


async def test_on_s3_a_cut_off_upload_resumes_and_is_composed_into_one_object(
    s3_endpoint: str,
    s3_bucket: str,
    settings: Settings,
    redis: Any,
    world: World,
    sessions: async_sessionmaker[AsyncSession],
) -> None:
    on_s3 = settings.model_copy(
        update={"storage": settings.storage.model_copy(update=s3_storage_settings(s3_endpoint, s3_bucket))}
    )
    data = essay(700_000)
    async with (
        serving(on_s3) as base,
        httpx.AsyncClient(base_url=base, event_hooks=same_origin(on_s3), timeout=30) as student,
    ):
        await login(student, "student")
        url = (await create(student, world.assignment_id, len(data))).headers["Location"]
        assert (await patch(student, url, 0, data[:CHUNK])).status_code == 204
        await cut_patch(base, student, on_s3, url, CHUNK, data[CHUNK : 2 * CHUNK], CHUNK // 3)
        done = await send_from(student, url, data)

    submission = await submission_of(sessions, int(done.headers["Handin-Submission-Id"]))
    assert submission.sha256 == hashlib.sha256(data).hexdigest()
    assert s3_object_keys(s3_endpoint, s3_bucket) == [f"incoming/{submission.storage_key}"]  # no partials left
    storage = make_s3_storage(s3_endpoint, s3_bucket)
    try:
        stored = b"".join([chunk async for chunk in storage.open(Area.incoming, submission.storage_key)])
    finally:
        await storage.close()
    assert stored == data
