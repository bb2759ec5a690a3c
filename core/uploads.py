"""Resumable (tus) uploads: their lifetime, the write lease, and the sweep that removes abandoned ones.

An upload row lives from its creation until ``expires_at``, which every
request that writes to it pushes ``UPLOAD_LIFETIME`` further (tus
``Upload-Expires``). A request writing bytes holds a lease on the row
(``locked_until``/``lock_token``), taken and released by conditional UPDATEs,
so two tabs resuming the same upload never write at once and an api that
dies mid-request frees it within ``LOCK_LEASE``. The maintenance worker calls
``expire_uploads`` on its reconcile schedule.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy import delete, or_, select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.clock import utcnow
from core.db import is_postgres, transaction
from core.models import Upload
from core.storage import Storage

log = logging.getLogger(__name__)

UPLOAD_LIFETIME = timedelta(hours=24)
LOCK_LEASE = timedelta(seconds=60)
EXPIRE_BATCH = 200


async def _no_commit_wait(session: AsyncSession) -> None:
    """Lease and offset writes need not wait for the WAL flush on PostgreSQL: losing the last one in a
    crash only makes the client re-send bytes the server has (an offset that lags is always safe)."""
    if is_postgres(session):
        await session.execute(text("SET LOCAL synchronous_commit TO OFF"))


async def claim(
    sessions: async_sessionmaker[AsyncSession], upload_id: str, user_id: int, assignment_id: int
) -> tuple[Upload, str] | None:
    """The user's own open upload with its lease taken, in one statement; None if it is not there to write
    (someone else's, expired, complete, or another request holds it): the caller asks why."""
    now, token = utcnow(), uuid.uuid4().hex
    async with transaction(sessions) as session:
        await _no_commit_wait(session)
        upload = (
            await session.scalars(
                update(Upload)
                .where(
                    Upload.id == upload_id,
                    Upload.user_id == user_id,
                    Upload.assignment_id == assignment_id,
                    Upload.submission_id.is_(None),
                    Upload.expires_at >= now,
                    or_(Upload.locked_until.is_(None), Upload.locked_until < now),
                )
                .values(locked_until=now + LOCK_LEASE, lock_token=token)
                .returning(Upload)
            )
        ).one_or_none()
    return (upload, token) if upload is not None else None


async def take_lease(sessions: async_sessionmaker[AsyncSession], upload_id: str) -> str | None:
    """The lease's token, or None while another request holds it."""
    now, token = utcnow(), uuid.uuid4().hex
    async with transaction(sessions) as session:
        taken = await session.execute(
            update(Upload)
            .where(Upload.id == upload_id, or_(Upload.locked_until.is_(None), Upload.locked_until < now))
            .values(locked_until=now + LOCK_LEASE, lock_token=token)
        )
    return token if taken.rowcount == 1 else None  # type: ignore[attr-defined]


async def renew_lease(sessions: async_sessionmaker[AsyncSession], upload_id: str, token: str) -> bool:
    async with transaction(sessions) as session:
        renewed = await session.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.lock_token == token)
            .values(locked_until=utcnow() + LOCK_LEASE)
        )
    return bool(renewed.rowcount == 1)  # type: ignore[attr-defined]


async def release_lease(
    sessions: async_sessionmaker[AsyncSession], upload_id: str, token: str, **changes: object
) -> bool:
    """Give the lease back, recording ``changes`` (e.g. the new offset) in the same statement.

    False if the upload was removed meanwhile (expired, or terminated after the lease ran out).
    """
    async with transaction(sessions) as session:
        await _no_commit_wait(session)
        released = await session.execute(
            update(Upload)
            .where(Upload.id == upload_id, Upload.lock_token == token)
            .values(locked_until=None, lock_token=None, **changes)
        )
    return bool(released.rowcount == 1)  # type: ignore[attr-defined]


async def expire_uploads(
    sessions: async_sessionmaker[AsyncSession], storage: Storage, now: datetime | None = None
) -> int:
    """Remove uploads past their expiry (the partial bytes, then the row); returns how many went.

    One being written to right now (a live lease) waits for the next pass: its
    request will push the expiry on anyway.
    """
    now = now or utcnow()
    removed = 0
    async with sessions() as session:
        expired = (
            await session.execute(
                select(Upload.id, Upload.partial_key, Upload.submission_id)
                .where(Upload.expires_at < now, or_(Upload.locked_until.is_(None), Upload.locked_until < now))
                .limit(EXPIRE_BATCH)
            )
        ).all()
    for upload_id, partial_key, submission_id in expired:
        # The row first: a request that takes the lease from now on finds no upload.
        async with transaction(sessions) as session:
            gone = await session.execute(
                delete(Upload).where(
                    Upload.id == upload_id,
                    Upload.expires_at < now,
                    or_(Upload.locked_until.is_(None), Upload.locked_until < now),
                )
            )
        if gone.rowcount != 1:  # type: ignore[attr-defined]
            continue
        removed += 1
        if submission_id is None:  # a completed one's bytes are its submission's now
            await storage.delete_partial(partial_key)
    if removed:
        log.info("expired resumable uploads removed", extra={"count": removed})
    return removed
