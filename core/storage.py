"""Where submitted files live: a local directory tree or an S3-compatible bucket.

Four areas: ``incoming`` (uploads land here), ``store`` (after the scan),
``quarantine`` (flagged files) and ``thumbnails``. Keys are always generated
by us (``<assignment_id>/<uuid hex>``), never taken from a user's filename.

Everything streams: no file is ever held whole in memory, and the SHA-256 is
computed while the bytes pass.

Resumable (tus) uploads grow a *partial* object in the incoming area, one
request's bytes at a time, and become an ordinary incoming object when the
last byte is in. Locally the partial is one file, appended to and fsynced per
request, renamed into place at the end. On S3 each request's bytes are one
object ``incoming/partial/<id>/<offset>`` (S3 has no append and multipart
parts must be 5 MiB, larger than a browser's chunk), and the end composes them
into the final object with ``put_stream``, which hashes as it copies. Every
api replica sees the same partials either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import os
import re
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Protocol

from core.settings import Settings

CHUNK_SIZE = 64 * 1024
# S3 multipart parts must be at least 5 MiB (except the last one).
S3_PART_SIZE = 8 * 1024 * 1024
# Flush to disk in slices this big, so a thread hop is not paid per tiny chunk (most uploads: one hop).
LOCAL_WRITE_SLICE = 4 * 1024 * 1024

_KEY_PATTERN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}(/[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}){0,7}")


class Area(StrEnum):
    incoming = "incoming"
    store = "store"
    quarantine = "quarantine"
    thumbnails = "thumbnails"


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    sha256: str


class TooLarge(Exception):
    """The stream passed ``max_bytes``; whatever was written has been removed."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(f"more than {max_bytes} bytes")
        self.max_bytes = max_bytes


class ObjectMissing(Exception):
    """Neither the source nor the target of a read or move holds the key."""


class Digest(Protocol):
    """A running hash (hashlib's objects): fed the bytes of a partial upload as they are written."""

    def update(self, data: bytes, /) -> None: ...


class Storage(Protocol):
    async def put_stream(
        self, area: Area, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None
    ) -> StoredObject: ...

    async def put_bytes(self, area: Area, key: str, data: bytes) -> StoredObject: ...

    def open(self, area: Area, key: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]: ...

    async def read_prefix(self, area: Area, key: str, limit: int) -> bytes: ...

    async def move(self, source: Area, target: Area, key: str) -> StoredObject: ...

    async def exists(self, area: Area, key: str) -> bool: ...

    async def delete(self, area: Area, key: str) -> None: ...

    async def local_path(self, area: Area, key: str) -> Path | None: ...

    async def append_partial(
        self, key: str, offset: int, chunks: AsyncIterable[bytes], digest: Digest | None = None
    ) -> int: ...

    async def read_partial_prefix(self, key: str, length: int, limit: int) -> bytes: ...

    async def finish_partial(self, key: str, length: int, target: str, sha256: str | None) -> StoredObject: ...

    async def delete_partial(self, key: str) -> None: ...

    async def close(self) -> None: ...


def new_key(assignment_id: int) -> str:
    """A fresh object key for an upload to this assignment."""
    return f"{assignment_id}/{uuid.uuid4().hex}"


def new_partial_key() -> str:
    """A fresh key for a resumable upload's partial object (never a submission's key shape)."""
    return f"partial/{uuid.uuid4().hex}"


def check_key(key: str) -> str:
    """Refuse anything but our own key shape (no traversal, no absolute paths)."""
    if not _KEY_PATTERN.fullmatch(key) or any(part in (".", "..") for part in key.split("/")):
        raise ValueError(f"not a storage key: {key!r}")
    return key


async def _with_limit(chunks: AsyncIterable[bytes], max_bytes: int | None) -> AsyncIterator[bytes]:
    total = 0
    async for chunk in chunks:
        total += len(chunk)
        if max_bytes is not None and total > max_bytes:
            raise TooLarge(max_bytes)
        if chunk:
            yield chunk


async def _hash_stream(chunks: AsyncIterable[bytes]) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    async for chunk in chunks:
        digest.update(chunk)
        size += len(chunk)
    return size, digest.hexdigest()


class LocalStorage:
    """One directory per area; writes go to a temp file, fsynced, then renamed into place."""

    def __init__(self, roots: dict[Area, Path]) -> None:
        self.roots = {area: Path(path) for area, path in roots.items()}

    @classmethod
    def from_settings(cls, settings: Settings) -> LocalStorage:
        section = settings.storage
        return cls(
            {
                Area.incoming: section.incoming_dir,
                Area.store: section.root,
                Area.quarantine: section.quarantine_dir,
                Area.thumbnails: section.thumbnails_dir or section.root.parent / "thumbnails",
            }
        )

    def path(self, area: Area, key: str) -> Path:
        return self.roots[area] / check_key(key)

    async def put_stream(
        self, area: Area, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None
    ) -> StoredObject:
        target = self.path(area, key)
        writer = _FileWriter(target, target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.part"))
        size, pending = 0, bytearray()
        try:
            async for chunk in _with_limit(chunks, max_bytes):
                size += len(chunk)
                pending += chunk
                if len(pending) >= LOCAL_WRITE_SLICE:
                    # Hand the buffer over instead of copying it; a fresh one collects the next slice.
                    full, pending = pending, bytearray()
                    await asyncio.to_thread(writer.write, full)
            sha256 = await asyncio.to_thread(writer.finish, pending)
        except BaseException:
            await asyncio.to_thread(writer.discard)
            raise
        return StoredObject(key, size, sha256)

    async def put_bytes(self, area: Area, key: str, data: bytes) -> StoredObject:
        return await self.put_stream(area, key, _single(data))

    async def open(self, area: Area, key: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        path = self.path(area, key)
        try:
            handle = await asyncio.to_thread(open, path, "rb")
        except FileNotFoundError as error:
            raise ObjectMissing(f"{area}/{key}") from error
        try:
            while chunk := await asyncio.to_thread(handle.read, chunk_size):
                yield chunk
        finally:
            handle.close()

    async def read_prefix(self, area: Area, key: str, limit: int) -> bytes:
        def read() -> bytes:
            with open(self.path(area, key), "rb") as handle:
                return handle.read(limit)

        try:
            return await asyncio.to_thread(read)
        except FileNotFoundError as error:
            raise ObjectMissing(f"{area}/{key}") from error

    async def move(self, source: Area, target: Area, key: str) -> StoredObject:
        src, dst = self.path(source, key), self.path(target, key)
        # One thread hop: the move, then the file read back where it now is and hashed.
        size, sha256 = await asyncio.to_thread(_move_and_hash, src, dst)
        return StoredObject(key, size, sha256)

    async def exists(self, area: Area, key: str) -> bool:
        return await asyncio.to_thread(self.path(area, key).is_file)

    async def delete(self, area: Area, key: str) -> None:
        await asyncio.to_thread(self.path(area, key).unlink, True)

    async def local_path(self, area: Area, key: str) -> Path | None:
        return self.path(area, key)

    async def append_partial(
        self, key: str, offset: int, chunks: AsyncIterable[bytes], digest: Digest | None = None
    ) -> int:
        """Write ``chunks`` at ``offset`` of the partial file (dropping anything past it); durable on return."""
        writer = _PartialWriter(self.path(Area.incoming, key), offset, digest)
        pending = bytearray()
        try:
            async for chunk in chunks:
                pending += chunk
                if len(pending) >= LOCAL_WRITE_SLICE:
                    full, pending = pending, bytearray()
                    await asyncio.to_thread(writer.write, full)
            return await asyncio.to_thread(writer.finish, pending)
        finally:
            await asyncio.to_thread(writer.close)

    async def read_partial_prefix(self, key: str, length: int, limit: int) -> bytes:
        return (await self.read_prefix(Area.incoming, key, min(limit, length)))[:length]

    async def finish_partial(self, key: str, length: int, target: str, sha256: str | None) -> StoredObject:
        """Rename the complete partial file to ``target`` (one filesystem: the incoming area); hash it if asked."""
        source, destination = self.path(Area.incoming, key), self.path(Area.incoming, target)

        def rename() -> int:
            with open(source, "r+b") as handle:
                handle.truncate(length)  # bytes past the acknowledged length are a cut-off request's
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(source, destination)
            return destination.stat().st_size

        try:
            size = await asyncio.to_thread(rename)
        except FileNotFoundError as error:
            raise ObjectMissing(f"incoming/{key}") from error
        if sha256 is None:
            size, sha256 = await _hash_stream(self.open(Area.incoming, target))
        return StoredObject(target, size, sha256)

    async def delete_partial(self, key: str) -> None:
        await self.delete(Area.incoming, key)

    async def close(self) -> None:
        return None


async def _single(data: bytes) -> AsyncIterator[bytes]:
    yield data


class _FileWriter:
    """The blocking half of LocalStorage.put_stream, run in a worker thread one slice at a time.

    The file is created on the first slice and the SHA-256 is computed here
    too (hashlib releases the GIL), so the event loop only collects bytes and
    a file that fits one slice costs a single thread hop.
    """

    def __init__(self, target: Path, temp: Path) -> None:
        self.target = target
        self.temp = temp
        self.digest = hashlib.sha256()
        self.handle: IO[bytes] | None = None

    def write(self, data: bytes | bytearray) -> None:
        if self.handle is None:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.temp, "wb")
        self.digest.update(data)
        self.handle.write(data)

    def finish(self, tail: bytes | bytearray) -> str:
        self.write(tail)
        assert self.handle is not None
        self.handle.flush()
        # A 202 promises the file is kept: make it durable before the rename publishes it.
        os.fsync(self.handle.fileno())
        self.handle.close()
        os.replace(self.temp, self.target)
        return self.digest.hexdigest()

    def discard(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.temp.unlink(missing_ok=True)


class _PartialWriter:
    """The blocking half of LocalStorage.append_partial: positioned writes, then truncate and fsync."""

    def __init__(self, path: Path, offset: int, digest: Digest | None) -> None:
        self.path = path
        self.offset = offset
        self.digest = digest
        self.handle: IO[bytes] | None = None

    def write(self, data: bytes | bytearray) -> None:
        if self.handle is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.handle = open(self.path, "r+b")
            except FileNotFoundError:
                if self.offset:
                    raise ObjectMissing(str(self.path)) from None
                self.handle = open(self.path, "w+b")
            if self.handle.seek(0, os.SEEK_END) < self.offset:
                raise ObjectMissing(f"{self.path} is shorter than offset {self.offset}")
            self.handle.seek(self.offset)
        if self.digest is not None:
            self.digest.update(bytes(data))
        self.handle.write(data)

    def finish(self, tail: bytes | bytearray) -> int:
        self.write(tail)
        assert self.handle is not None
        end = self.handle.tell()
        self.handle.truncate(end)
        self.handle.flush()
        # The new offset is promised to the client: make it durable first.
        os.fsync(self.handle.fileno())
        return end

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def file_sha256(path: Path, chunk_size: int = CHUNK_SIZE) -> tuple[int, str]:
    """A file's size and SHA-256, read in this thread."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _move_and_hash(src: Path, dst: Path) -> tuple[int, str]:
    """``_move_file``, then the size and SHA-256 of the file where it now is."""
    _move_file(src, dst)
    try:
        return file_sha256(dst)
    except FileNotFoundError as error:
        raise ObjectMissing(str(dst)) from error


def _move_file(src: Path, dst: Path) -> None:
    """Rename, or copy-then-rename across filesystems; a repeated move is a no-op."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not src.exists():
        if dst.exists():
            return  # moved already
        raise ObjectMissing(str(src))
    try:
        os.replace(src, dst)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    temp = dst.with_name(f".{dst.name}.{uuid.uuid4().hex[:8]}.part")
    try:
        with open(src, "rb") as reader, open(temp, "wb") as writer:
            while chunk := reader.read(CHUNK_SIZE):
                writer.write(chunk)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temp, dst)
    finally:
        temp.unlink(missing_ok=True)
    src.unlink(missing_ok=True)


class S3Storage:
    """One bucket; each area is a key prefix. One long-lived client, opened on first use."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        part_size: int = S3_PART_SIZE,
    ) -> None:
        if part_size < 5 * 1024 * 1024:
            raise ValueError("S3 multipart parts must be at least 5 MiB")
        self.bucket = bucket
        self.part_size = part_size
        self._client_args: dict[str, Any] = {
            "endpoint_url": endpoint_url,
            "region_name": region,
            "aws_access_key_id": access_key_id,
            "aws_secret_access_key": secret_access_key,
        }
        self._exit_stack = contextlib.AsyncExitStack()
        self._client: Any = None
        self._lock = asyncio.Lock()

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Storage:
        section = settings.storage
        return cls(
            section.s3_bucket,
            endpoint_url=section.s3_endpoint_url,
            region=section.s3_region,
            access_key_id=section.s3_access_key_id,
            secret_access_key=section.s3_secret_access_key,
        )

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None:
                import aioboto3  # the local backend never pays for importing boto

                session = aioboto3.Session()
                self._client = await self._exit_stack.enter_async_context(session.client("s3", **self._client_args))
            return self._client

    async def close(self) -> None:
        async with self._lock:
            await self._exit_stack.aclose()
            self._client = None
            self._exit_stack = contextlib.AsyncExitStack()

    @staticmethod
    def object_key(area: Area, key: str) -> str:
        return f"{area.value}/{check_key(key)}"

    async def put_stream(
        self, area: Area, key: str, chunks: AsyncIterable[bytes], max_bytes: int | None = None
    ) -> StoredObject:
        s3 = await self.client()
        name = self.object_key(area, key)
        digest, size, buffer = hashlib.sha256(), 0, bytearray()
        upload_id: str | None = None
        parts: list[dict[str, Any]] = []
        try:
            async for chunk in _with_limit(chunks, max_bytes):
                digest.update(chunk)
                size += len(chunk)
                buffer += chunk
                while len(buffer) >= self.part_size:
                    if upload_id is None:
                        created = await s3.create_multipart_upload(Bucket=self.bucket, Key=name)
                        upload_id = created["UploadId"]
                    part, buffer = bytes(buffer[: self.part_size]), buffer[self.part_size :]
                    answer = await s3.upload_part(
                        Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=len(parts) + 1, Body=part
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
            if upload_id is None:
                await s3.put_object(Bucket=self.bucket, Key=name, Body=bytes(buffer))
            else:
                if buffer:
                    answer = await s3.upload_part(
                        Bucket=self.bucket, Key=name, UploadId=upload_id, PartNumber=len(parts) + 1, Body=bytes(buffer)
                    )
                    parts.append({"PartNumber": len(parts) + 1, "ETag": answer["ETag"]})
                await s3.complete_multipart_upload(
                    Bucket=self.bucket, Key=name, UploadId=upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            if upload_id is not None:
                with contextlib.suppress(Exception):
                    await s3.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload_id)
            raise
        return StoredObject(key, size, digest.hexdigest())

    async def put_bytes(self, area: Area, key: str, data: bytes) -> StoredObject:
        return await self.put_stream(area, key, _single(data))

    async def open(self, area: Area, key: str, chunk_size: int = CHUNK_SIZE) -> AsyncIterator[bytes]:
        s3 = await self.client()
        try:
            answer = await s3.get_object(Bucket=self.bucket, Key=self.object_key(area, key))
        except s3.exceptions.NoSuchKey as error:
            raise ObjectMissing(f"{area}/{key}") from error
        body = answer["Body"]
        try:
            async for chunk in body.iter_chunks(chunk_size):
                yield chunk
        finally:
            body.close()

    async def read_prefix(self, area: Area, key: str, limit: int) -> bytes:
        s3 = await self.client()
        name = self.object_key(area, key)
        try:
            answer = await s3.get_object(Bucket=self.bucket, Key=name, Range=f"bytes=0-{max(limit, 1) - 1}")
        except s3.exceptions.NoSuchKey as error:
            raise ObjectMissing(f"{area}/{key}") from error
        except s3.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") == "InvalidRange":
                return b""  # an empty object has no byte 0
            raise
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data[:limit]

    async def move(self, source: Area, target: Area, key: str) -> StoredObject:
        s3 = await self.client()
        src, dst = self.object_key(source, key), self.object_key(target, key)
        if await self.exists(source, key):
            await s3.copy_object(Bucket=self.bucket, Key=dst, CopySource={"Bucket": self.bucket, "Key": src})
            # Hash what landed before dropping the source, so a bad copy loses nothing.
            size, sha256 = await _hash_stream(self.open(target, key))
            await s3.delete_object(Bucket=self.bucket, Key=src)
            return StoredObject(key, size, sha256)
        if not await self.exists(target, key):
            raise ObjectMissing(src)
        size, sha256 = await _hash_stream(self.open(target, key))
        return StoredObject(key, size, sha256)

    async def exists(self, area: Area, key: str) -> bool:
        s3 = await self.client()
        try:
            await s3.head_object(Bucket=self.bucket, Key=self.object_key(area, key))
        except s3.exceptions.ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise
        return True

    async def delete(self, area: Area, key: str) -> None:
        s3 = await self.client()
        await s3.delete_object(Bucket=self.bucket, Key=self.object_key(area, key))

    async def local_path(self, area: Area, key: str) -> Path | None:
        return None

    def _segment_prefix(self, key: str) -> str:
        return f"{self.object_key(Area.incoming, key)}/"

    async def append_partial(
        self, key: str, offset: int, chunks: AsyncIterable[bytes], digest: Digest | None = None
    ) -> int:
        """One object per request, named by its starting offset (a resume at the same offset replaces it)."""
        data = bytearray()
        async for chunk in chunks:
            if digest is not None:
                digest.update(chunk)
            data += chunk  # bounded by the request body limit (one tus chunk)
        if data:
            s3 = await self.client()
            name = f"{self._segment_prefix(key)}{offset:016d}"
            await s3.put_object(Bucket=self.bucket, Key=name, Body=bytes(data))
        return offset + len(data)

    async def _segments(self, key: str) -> dict[int, str]:
        s3 = await self.client()
        prefix, found = self._segment_prefix(key), {}
        paginator = s3.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                found[int(item["Key"][len(prefix) :])] = item["Key"]
        return found

    async def _partial_chunks(self, key: str, length: int) -> AsyncIterator[bytes]:
        """The partial's bytes 0..length, following the chain of segments from offset 0.

        A segment left by a request cut off before its offset was recorded is not on the
        chain (the resume replaced it, or started where the chain says), so it is skipped.
        """
        s3 = await self.client()
        segments, position = await self._segments(key), 0
        while position < length:
            name = segments.get(position)
            if name is None:
                raise ObjectMissing(f"incoming/{key} at offset {position}")
            answer = await s3.get_object(Bucket=self.bucket, Key=name)
            body = answer["Body"]
            try:
                async for chunk in body.iter_chunks(CHUNK_SIZE):
                    chunk = chunk[: length - position]
                    if not chunk:
                        break
                    position += len(chunk)
                    yield chunk
            finally:
                body.close()

    async def read_partial_prefix(self, key: str, length: int, limit: int) -> bytes:
        prefix = bytearray()
        chunks = self._partial_chunks(key, min(length, limit))
        async for chunk in chunks:
            prefix += chunk
        return bytes(prefix)

    async def finish_partial(self, key: str, length: int, target: str, sha256: str | None) -> StoredObject:
        """Compose the segments into the final incoming object (hashed while copying), then drop them."""
        stored = await self.put_stream(Area.incoming, target, self._partial_chunks(key, length))
        if stored.size != length:
            await self.delete(Area.incoming, target)
            raise ObjectMissing(f"incoming/{key}: {stored.size} of {length} bytes")
        await self.delete_partial(key)
        return stored

    async def delete_partial(self, key: str) -> None:
        s3 = await self.client()
        names = list((await self._segments(key)).values())
        for start in range(0, len(names), 1000):
            objects = [{"Key": name} for name in names[start : start + 1000]]
            await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": objects, "Quiet": True})


def make_storage(settings: Settings) -> Storage:
    if settings.storage.backend == "s3":
        return S3Storage.from_settings(settings)
    return LocalStorage.from_settings(settings)
