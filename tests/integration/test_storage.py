"""The storage backends, each test run against a local directory and a moto S3 server."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from core.settings import Settings
from core.storage import (
    Area,
    LocalStorage,
    ObjectMissing,
    S3Storage,
    Storage,
    TooLarge,
    make_storage,
    new_key,
)
from tests.fixtures.s3 import make_s3_storage, s3_object_keys, s3_open_multipart_uploads


@pytest.fixture(params=["local", "s3"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Storage]:
    if request.param == "local":
        settings = Settings(
            storage={"incoming_dir": tmp_path / "in", "root": tmp_path / "store", "quarantine_dir": tmp_path / "q"}
        )
        yield make_storage(settings)
    else:
        s3 = make_s3_storage(request.getfixturevalue("s3_endpoint"), request.getfixturevalue("s3_bucket"))
        yield s3
        await s3.close()


async def chunked(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def read_all(storage: Storage, area: Area, key: str) -> bytes:
    return b"".join([chunk async for chunk in storage.open(area, key)])


def leftovers(storage: Storage) -> list[str]:
    """Every file or object the backend holds, temp files and open multipart uploads included."""
    if isinstance(storage, LocalStorage):
        return [str(p) for root in storage.roots.values() if root.exists() for p in root.rglob("*") if p.is_file()]
    assert isinstance(storage, S3Storage)
    endpoint = storage._client_args["endpoint_url"]
    return s3_object_keys(endpoint, storage.bucket) + s3_open_multipart_uploads(endpoint, storage.bucket)


async def test_put_stream_hashes_while_streaming_and_reads_back(storage: Storage) -> None:
    data = os.urandom(300_000)
    key = new_key(7)
    stored = await storage.put_stream(Area.incoming, key, chunked(data))
    assert stored.key == key
    assert stored.size == len(data)
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    assert await storage.exists(Area.incoming, key)
    assert not await storage.exists(Area.store, key)
    assert await read_all(storage, Area.incoming, key) == data
    assert await storage.read_prefix(Area.incoming, key, 16) == data[:16]


async def test_large_upload_goes_in_parts_and_survives_intact(storage: Storage) -> None:
    """12 MiB is more than one S3 part (8 MiB), so the S3 backend uses a multipart upload."""
    data = os.urandom(12 * 1024 * 1024 + 17)
    key = new_key(1)
    stored = await storage.put_stream(Area.incoming, key, chunked(data, 1024 * 1024))
    assert (stored.size, stored.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert hashlib.sha256(await read_all(storage, Area.incoming, key)).hexdigest() == stored.sha256


@pytest.mark.parametrize("total", [2_000_000, 12 * 1024 * 1024])
async def test_too_large_leaves_nothing_behind(storage: Storage, total: int) -> None:
    key = new_key(1)
    with pytest.raises(TooLarge):
        await storage.put_stream(Area.incoming, key, chunked(os.urandom(total), 512 * 1024), max_bytes=total - 1)
    assert not await storage.exists(Area.incoming, key)
    assert leftovers(storage) == []


async def test_exactly_max_bytes_is_accepted(storage: Storage) -> None:
    stored = await storage.put_stream(Area.incoming, new_key(1), chunked(b"x" * 1000, 7), max_bytes=1000)
    assert stored.size == 1000


async def test_empty_object(storage: Storage) -> None:
    key = new_key(2)
    stored = await storage.put_bytes(Area.thumbnails, key, b"")
    assert stored.size == 0
    assert stored.sha256 == hashlib.sha256(b"").hexdigest()
    assert await storage.read_prefix(Area.thumbnails, key, 10) == b""
    assert await read_all(storage, Area.thumbnails, key) == b""


async def test_move_verifies_and_is_idempotent(storage: Storage) -> None:
    data = b"%PDF-1.7\n" + os.urandom(5000)
    key = new_key(3)
    await storage.put_bytes(Area.incoming, key, data)
    moved = await storage.move(Area.incoming, Area.store, key)
    assert moved.sha256 == hashlib.sha256(data).hexdigest()
    assert moved.size == len(data)
    assert not await storage.exists(Area.incoming, key)
    assert await read_all(storage, Area.store, key) == data
    again = await storage.move(Area.incoming, Area.store, key)
    assert again == moved
    with pytest.raises(ObjectMissing):
        await storage.move(Area.incoming, Area.quarantine, new_key(3))


async def test_delete_is_idempotent_and_missing_reads_fail(storage: Storage) -> None:
    key = new_key(4)
    await storage.put_bytes(Area.quarantine, key, b"bad")
    await storage.delete(Area.quarantine, key)
    await storage.delete(Area.quarantine, key)
    assert not await storage.exists(Area.quarantine, key)
    with pytest.raises(ObjectMissing):
        await storage.read_prefix(Area.quarantine, key, 3)
    with pytest.raises(ObjectMissing):
        await read_all(storage, Area.quarantine, key)


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs", "a/../b", "", "a//b", "a/./b", "x" * 300])
async def test_keys_that_could_escape_are_refused(storage: Storage, key: str) -> None:
    with pytest.raises(ValueError):
        await storage.put_bytes(Area.incoming, key, b"data")


async def test_local_path_only_for_the_local_backend(storage: Storage) -> None:
    key = new_key(5)
    await storage.put_bytes(Area.store, key, b"abc")
    path = await storage.local_path(Area.store, key)
    if isinstance(storage, LocalStorage):
        assert path is not None and path.read_bytes() == b"abc"
    else:
        assert path is None


def test_make_storage_picks_the_backend(tmp_path: Path) -> None:
    local = make_storage(Settings(storage={"root": tmp_path / "store"}))
    assert isinstance(local, LocalStorage)
    assert local.roots[Area.thumbnails] == tmp_path / "thumbnails"
    s3 = make_storage(Settings(storage={"backend": "s3", "s3_bucket": "b", "s3_endpoint_url": "http://127.0.0.1:1"}))
    assert isinstance(s3, S3Storage) and s3.bucket == "b"
