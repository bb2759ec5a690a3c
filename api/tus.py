"""Resumable uploads: the tus 1.0 protocol (core, creation, termination, expiration, checksum) over the intake.

A student's page creates an upload (POST, with ``Upload-Length``), sends the
file in chunks (PATCH at ``Upload-Offset``), asks where it stands after a
dropped connection (HEAD) and carries on from there. The checks are the plain
upload's own (``api.intake.check_window``/``check_kind``): enrolment, window
and attempts at creation, the size against the declared length, the type once
the first 64 KB (or the whole file) are in; and again at completion, judged
at the creation time, so an upload started before the cut-off is on time.
Completion records the submission through ``Intake.accept`` with the
idempotency key ``tus:<upload id>``: one transaction, first step enqueued,
and a repeated completion finds the same submission.

The SHA-256 (and, for text, the check that it stays text) is kept running in
this process while chunks arrive in order (most uploads: one process, one
connection); when a chunk lands on another replica, after a restart or after
a refused chunk the running state is gone and the finished file is read once
more on completion (hashlib's state cannot be saved). A
``sha1`` ``Upload-Checksum`` is verified per request; a mismatch (460) keeps
the offset where it was.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from typing import TYPE_CHECKING

from arq.connections import ArqRedis
from fastapi import HTTPException, Request
from sqlalchemy import delete
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from starlette.requests import ClientDisconnect

from api import metrics
from api.intake import Intake, Landed, Refused, check_kind, check_window, earlier_submission, not_text, too_large
from core.clock import utcnow
from core.db import transaction
from core.models import Assignment, Upload, User
from core.settings import Settings
from core.sniff import SNIFF_BYTES, TEXT, Sniffed, TextCheck, sanitise_filename
from core.storage import Area, ObjectMissing, Storage, StoredObject, new_partial_key
from core.uploads import LOCK_LEASE, UPLOAD_LIFETIME, claim, release_lease, renew_lease, take_lease

if TYPE_CHECKING:
    from hashlib import _Hash

TUS_VERSION = "1.0.0"
EXTENSIONS = "creation,termination,expiration,checksum"
CHECKSUM_ALGORITHMS = "sha1"
OFFSET_TYPE = "application/offset+octet-stream"
# The most one PATCH may carry; the page sends 1 MiB chunks. The body limit middleware allows this much.
MAX_CHUNK_BYTES = 8 * 1024 * 1024
SUBMISSION_HEADER = "Handin-Submission-Id"
CHECKSUM_MISMATCH = 460
# Running hashes of uploads in progress in this process: (offset they cover, hash). Bounded; a miss costs a re-read.
RUNNING_HASHES_KEPT = 4096
_running: OrderedDict[str, Running] = OrderedDict()


@dataclass
class Running:
    """What this process has seen of an upload so far, from byte 0: its SHA-256 and whether it is still text."""

    offset: int
    sha256: _Hash
    text: TextCheck


def tus_headers(**extra: str) -> dict[str, str]:
    return {"Tus-Resumable": TUS_VERSION, **extra}


def options_headers(max_size: int) -> dict[str, str]:
    return tus_headers(
        **{
            "Tus-Version": TUS_VERSION,
            "Tus-Extension": EXTENSIONS,
            "Tus-Max-Size": str(max_size),
            "Tus-Checksum-Algorithm": CHECKSUM_ALGORITHMS,
        }
    )


def expires_header(moment: datetime) -> str:
    return format_datetime(moment, usegmt=True)


def check_version(request: Request) -> None:
    if request.headers.get("tus-resumable") != TUS_VERSION:
        raise HTTPException(
            412,
            f"Send Tus-Resumable: {TUS_VERSION}; this server speaks tus {TUS_VERSION}.",
            headers=tus_headers(**{"Tus-Version": TUS_VERSION}),
        )


def parse_metadata(header: str | None) -> dict[str, str]:
    """``Upload-Metadata``: comma-separated ``key base64value`` pairs."""
    found: dict[str, str] = {}
    for pair in (header or "").split(","):
        parts = pair.strip().split(" ")
        if not parts[0]:
            continue
        try:
            value = base64.b64decode(parts[1], validate=True).decode("utf-8") if len(parts) > 1 else ""
        except (binascii.Error, UnicodeDecodeError) as error:
            raise HTTPException(400, f"Upload-Metadata value of {parts[0]!r} is not base64 UTF-8.") from error
        found[parts[0]] = value
    return found


def parse_checksum(header: str | None) -> bytes | None:
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    if algorithm.lower() != "sha1":
        raise HTTPException(400, f"Upload-Checksum algorithm {algorithm!r} is not supported; use sha1.")
    try:
        return base64.b64decode(value, validate=True)
    except binascii.Error as error:
        raise HTTPException(400, "Upload-Checksum is not base64.") from error


def _header_int(request: Request, name: str) -> int:
    value = request.headers.get(name)
    if value is None or not value.isdigit():
        raise HTTPException(400, f"Send {name} as a non-negative whole number of bytes.", headers=tus_headers())
    return int(value)


@dataclass(frozen=True)
class Progress:
    """What a HEAD or PATCH answers with."""

    offset: int
    length: int
    expires_at: datetime
    submission_id: int | None

    def headers(self) -> dict[str, str]:
        headers = tus_headers(
            **{
                "Upload-Offset": str(self.offset),
                "Upload-Length": str(self.length),
                "Upload-Expires": expires_header(self.expires_at),
                "Cache-Control": "no-store",
            }
        )
        if self.submission_id is not None:
            headers[SUBMISSION_HEADER] = str(self.submission_id)
            headers["Content-Location"] = f"/api/submissions/{self.submission_id}"
        return headers


class _Body:
    """The PATCH body as it arrives: counted, sha1-summed if asked, ended quietly by a dropped connection.

    A cut-off request keeps what arrived (tus: the next HEAD reports it). The write lease is
    renewed while a slow body streams.
    """

    def __init__(self, request: Request, room: int, want_sha1: bool, renew: _Renewal) -> None:
        self.request = request
        self.room = room
        self.sha1 = hashlib.sha1() if want_sha1 else None
        self.text: TextCheck | None = None  # fed every byte when the upload's running state is kept
        self.renew = renew
        self.count = 0
        self.interrupted = False
        self.too_long = False

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self.request.stream():
                if self.count + len(chunk) > self.room:
                    self.too_long = True
                    return
                self.count += len(chunk)
                if self.sha1 is not None:
                    self.sha1.update(chunk)
                if self.text is not None:
                    self.text.feed(chunk)
                await self.renew.maybe()
                if chunk:
                    yield chunk
        except ClientDisconnect:
            self.interrupted = True


class _Renewal:
    def __init__(self, sessions: async_sessionmaker[AsyncSession], upload_id: str, token: str) -> None:
        self.sessions, self.upload_id, self.token = sessions, upload_id, token
        self.due = time.monotonic() + LOCK_LEASE.total_seconds() / 3

    async def maybe(self) -> None:
        if time.monotonic() >= self.due:
            await renew_lease(self.sessions, self.upload_id, self.token)
            self.due = time.monotonic() + LOCK_LEASE.total_seconds() / 3


class Resumable:
    def __init__(
        self, settings: Settings, sessions: async_sessionmaker[AsyncSession], redis: ArqRedis, storage: Storage
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.storage = storage
        self.intake = Intake(settings, sessions, redis, storage)

    async def create(self, request: Request, user: User, assignment_id: int) -> Upload:
        """tus creation: the plain upload's checks as of now, then an empty upload row."""
        check_version(request)
        if "upload-defer-length" in request.headers:
            raise HTTPException(400, "Send Upload-Length: a deferred length is not supported.", headers=tus_headers())
        length = _header_int(request, "upload-length")
        metadata = parse_metadata(request.headers.get("upload-metadata"))
        now = utcnow()  # the deadline is judged by this moment, however long the upload takes
        try:
            window = await check_window(self.sessions, self.settings, user, assignment_id, now)
            if length == 0:
                raise Refused(422, "empty", "The file is empty.")
            if length > window.max_bytes:
                raise too_large(window.max_bytes)
        except Refused as refusal:
            metrics.upload_refused(refusal.reason)
            raise
        upload = Upload(
            id=new_partial_key().rsplit("/", 1)[1],
            user_id=user.id,
            assignment_id=assignment_id,
            length=length,
            received=0,
            filename=sanitise_filename(metadata.get("filename")),
            created_at=now,
            expires_at=now + UPLOAD_LIFETIME,
        )
        upload.partial_key = f"partial/{upload.id}"
        async with transaction(self.sessions) as session:
            session.add(upload)
        return upload

    async def find(self, user: User, assignment_id: int, upload_id: str) -> Upload:
        """The user's own upload; 404 for anyone else's (ids do not leak), 410 once expired."""
        async with self.sessions() as session:
            upload = await session.get(Upload, upload_id) if len(upload_id) == 32 else None
        if upload is None or upload.user_id != user.id or upload.assignment_id != assignment_id:
            raise HTTPException(404, "There is no such upload, or it is not yours.", headers=tus_headers())
        if upload.expires_at < utcnow() and upload.submission_id is None:
            raise HTTPException(410, "This upload expired; start it again.", headers=tus_headers())
        return upload

    async def write(self, request: Request, user: User, assignment_id: int, upload_id: str) -> Progress:
        """tus PATCH: append the body at ``Upload-Offset``; the last byte makes the submission."""
        check_version(request)
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != OFFSET_TYPE:
            raise HTTPException(415, f"Send the bytes as Content-Type: {OFFSET_TYPE}.", headers=tus_headers())
        offset = _header_int(request, "upload-offset")
        checksum = parse_checksum(request.headers.get("upload-checksum"))
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_CHUNK_BYTES:
            raise HTTPException(413, f"Send at most {MAX_CHUNK_BYTES} bytes per request.", headers=tus_headers())
        claimed = await claim(self.sessions, upload_id, user.id, assignment_id)
        if claimed is None:
            upload = await self.find(user, assignment_id, upload_id)  # 404 or 410 if that is why
            if upload.submission_id is not None:
                if offset == upload.length:  # the answer to the last chunk was lost: say it again
                    return Progress(upload.length, upload.length, upload.expires_at, upload.submission_id)
                raise _wrong_offset(upload.length)
            raise HTTPException(
                409,
                "Another tab or request is sending this upload right now; ask again for the offset.",
                headers=tus_headers(),
            )
        upload, token = claimed
        changes: dict[str, object] = {}
        try:
            if upload.received != offset:
                raise _wrong_offset(upload.received)
            if declared is not None and declared.isdigit() and int(declared) > upload.length - offset:
                raise HTTPException(413, "This chunk goes past the upload's length.", headers=tus_headers())
            return await self._write_locked(request, user, upload, token, checksum, changes)
        finally:
            await release_lease(self.sessions, upload.id, token, **changes)

    async def _write_locked(
        self,
        request: Request,
        user: User,
        upload: Upload,
        token: str,
        checksum: bytes | None,
        changes: dict[str, object],
    ) -> Progress:
        offset = upload.received
        body = _Body(
            request,
            min(upload.length - offset, MAX_CHUNK_BYTES),
            checksum is not None,
            _Renewal(self.sessions, upload.id, token),
        )
        # The running state goes on from where it stopped, or starts at byte 0; a refused chunk drops it
        # (the completion then reads the file once instead).
        running = _running.pop(upload.id, None)
        if running is None or running.offset != offset:
            running = Running(0, hashlib.sha256(), TextCheck()) if offset == 0 else None
        body.text = running.text if running is not None else None
        digest = running.sha256 if running is not None else None
        end = await self.storage.append_partial(upload.partial_key, offset, body.chunks(), digest)
        if body.too_long:
            raise HTTPException(413, "This chunk goes past the upload's length.", headers=tus_headers())
        if body.sha1 is not None and body.sha1.digest() != checksum:
            raise HTTPException(CHECKSUM_MISMATCH, "Checksum mismatch: send this chunk again.", headers=tus_headers())
        now = utcnow()
        changes.update(received=end, expires_at=now + UPLOAD_LIFETIME)
        if running is not None:
            running.offset = end
            _remember(upload.id, running)
        if upload.kind is None and (end >= SNIFF_BYTES or end == upload.length):
            sniffed = await self._sniff(upload, end)
            changes.update(kind=sniffed.kind, content_type=sniffed.content_type)
            upload.kind, upload.content_type = sniffed.kind, sniffed.content_type
        if upload.kind == TEXT and running is not None and not running.text.valid:
            # Began as text, turned binary: refused now, not after the rest of the file has come.
            await self._discard(upload)
            metrics.upload_refused("type")
            async with self.sessions() as session:
                raise not_text((await session.get_one(Assignment, upload.assignment_id)).accepted_types)
        submission_id = None
        if end == upload.length:
            submission_id = await self._complete(user, upload)
            changes["submission_id"] = submission_id
        return Progress(end, upload.length, now + UPLOAD_LIFETIME, submission_id)

    async def _sniff(self, upload: Upload, end: int) -> Sniffed:
        prefix = await self.storage.read_partial_prefix(upload.partial_key, end, SNIFF_BYTES)
        async with self.sessions() as session:
            accepted_types = (await session.get_one(Assignment, upload.assignment_id)).accepted_types
        try:
            return check_kind(prefix, end == upload.length and end <= SNIFF_BYTES, accepted_types)
        except Refused as refusal:
            await self._discard(upload)
            metrics.upload_refused(refusal.reason)
            raise

    async def _complete(self, user: User, upload: Upload) -> int:
        """The whole file is in: the plain upload's checks as of the start, then the same recording."""
        key = f"tus:{upload.id}"
        try:
            earlier = await earlier_submission(self.sessions, user, upload.assignment_id, key)
            if earlier is not None:  # completed before, and the answer was lost
                return earlier
            window = await check_window(self.sessions, self.settings, user, upload.assignment_id, upload.created_at)
            if upload.length > window.max_bytes:
                raise too_large(window.max_bytes)
            target = f"{upload.assignment_id}/{upload.id}"
            running = _running.pop(upload.id, None)
            seen_all = running is not None and running.offset == upload.length
            sha256 = running.sha256.hexdigest() if running is not None and seen_all else None
            try:
                stored = await self.storage.finish_partial(upload.partial_key, upload.length, target, sha256)
            except ObjectMissing as missing:
                if not await self.storage.exists(Area.incoming, target):
                    # An earlier completion failed to record and removed the file: the client starts again.
                    await self._discard(upload)
                    raise HTTPException(
                        410, "This upload was lost; send the file again.", headers=tus_headers()
                    ) from missing
                stored = await _rehash(self.storage, target)  # a completion cut short after the rename
            assert upload.kind is not None and upload.content_type is not None
            if upload.kind == TEXT and not (
                running.text.finish() if running is not None and seen_all else await _stays_text(self.storage, target)
            ):
                await self.storage.delete(Area.incoming, target)
                raise not_text(window.assignment.accepted_types)
        except Refused as refusal:
            await self._discard(upload)
            metrics.upload_refused(refusal.reason)
            raise
        landed = Landed(target, stored.size, stored.sha256, upload.filename, Sniffed(upload.kind, upload.content_type))
        try:
            accepted = await self.intake.accept(user, window, landed, key, upload.created_at)
        except Refused as refusal:  # e.g. the last attempt was taken meanwhile; accept removed the file
            await self._discard(upload)
            metrics.upload_refused(refusal.reason)
            raise
        return accepted.submission_id

    async def terminate(self, user: User, upload: Upload) -> None:
        """tus termination: the partial bytes and the row go (a finished upload's submission stays)."""
        token = await take_lease(self.sessions, upload.id)
        if token is None:
            raise HTTPException(409, "This upload is being sent right now; try again.", headers=tus_headers())
        await self._discard(upload)

    async def _discard(self, upload: Upload) -> None:
        _running.pop(upload.id, None)
        async with transaction(self.sessions) as session:
            await session.execute(delete(Upload).where(Upload.id == upload.id))
        if upload.submission_id is None:
            await self.storage.delete_partial(upload.partial_key)


def _remember(upload_id: str, running: Running) -> None:
    _running[upload_id] = running
    _running.move_to_end(upload_id)
    while len(_running) > RUNNING_HASHES_KEPT:
        _running.popitem(last=False)


def _wrong_offset(current: int) -> HTTPException:
    return HTTPException(
        409,
        f"Upload-Offset does not match: the server has {current} bytes of this upload. Ask with HEAD and resume.",
        headers=tus_headers(**{"Upload-Offset": str(current)}),
    )


async def _rehash(storage: Storage, key: str) -> StoredObject:
    digest, size = hashlib.sha256(), 0
    async for chunk in storage.open(Area.incoming, key):
        digest.update(chunk)
        size += len(chunk)
    return StoredObject(key, size, digest.hexdigest())


async def _stays_text(storage: Storage, key: str) -> bool:
    check = TextCheck()
    async for chunk in storage.open(Area.incoming, key):
        if not check.feed(chunk):
            return False
    return check.finish()
