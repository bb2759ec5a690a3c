"""Flash messages: stored per user until the browser confirms they were seen.

A flash is a ``Flash`` row plus a ``flash`` event on ``user.<id>``, written in
the same transaction, so an open page gets it live and a page opened later
renders it from the database. A flash made by the system for a reason that
may repeat (a grade release run twice) carries a ``dedupe_key``: the second
attempt finds the first and creates nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import isoformat, utcnow
from core.events import EventBatch
from core.models import Flash

Kind = Literal["info", "success", "warning", "error"]
KINDS: frozenset[str] = frozenset({"info", "success", "warning", "error"})
CONFIRM_REASONS: frozenset[str] = frozenset({"seen", "dismissed", "clicked"})


@dataclass(frozen=True)
class FlashSpec:
    """What to show; everything but the text is optional."""

    text: str
    kind: Kind = "info"
    link_url: str | None = None
    link_text: str | None = None
    button_text: str | None = None
    # A same-origin URL the button POSTs to, or a page URL it opens ("open:/path").
    button_action: str | None = None
    modal: bool = False
    # None keeps a toast until it is dismissed.
    auto_hide_seconds: int | None = 8
    dedupe_key: str | None = None


def flash_as_dict(flash: Flash) -> dict[str, Any]:
    """The shape pages and the live event carry."""
    return {
        "id": flash.id,
        "kind": flash.kind,
        "text": flash.text,
        "link_url": flash.link_url,
        "link_text": flash.link_text,
        "button_text": flash.button_text,
        "button_action": flash.button_action,
        "modal": flash.modal,
        "auto_hide_seconds": flash.auto_hide_seconds,
        "created_at": isoformat(flash.created_at),
    }


async def existing_dedupe_keys(session: AsyncSession, dedupe_keys: list[str]) -> set[str]:
    if not dedupe_keys:
        return set()
    found = await session.scalars(select(Flash.dedupe_key).where(Flash.dedupe_key.in_(dedupe_keys)))
    return {key for key in found if key is not None}


async def add_flash(batch: EventBatch, user_id: int, spec: FlashSpec, *, known: set[str] | None = None) -> Flash | None:
    """Store a flash and its live event in the caller's transaction; None if deduped.

    ``known`` lets a caller making many flashes look the dedupe keys up once.
    """
    if spec.kind not in KINDS:
        raise ValueError(f"unknown flash kind {spec.kind!r}")
    if spec.dedupe_key is not None:
        seen = known if known is not None else await existing_dedupe_keys(batch.session, [spec.dedupe_key])
        if spec.dedupe_key in seen:
            return None
    flash = Flash(
        user_id=user_id,
        kind=spec.kind,
        text=spec.text,
        link_url=spec.link_url,
        link_text=spec.link_text,
        button_text=spec.button_text,
        button_action=spec.button_action,
        modal=spec.modal,
        auto_hide_seconds=spec.auto_hide_seconds,
        dedupe_key=spec.dedupe_key,
        created_at=utcnow(),
    )
    batch.session.add(flash)
    await batch.session.flush()
    await batch.emit(keys.user_topic(user_id), "flash", flash_as_dict(flash))
    return flash


async def push_flash(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, user_id: int, spec: FlashSpec
) -> Flash | None:
    """Create one flash in its own transaction and push it live."""
    async with sessions() as session, session.begin():
        batch = EventBatch(session)
        flash = await add_flash(batch, user_id, spec)
    await batch.publish(redis)
    return flash


async def pending_flashes(session: AsyncSession, user_id: int, limit: int = 20) -> list[Flash]:
    """Unconfirmed flashes, oldest first: what the next page view shows."""
    rows = await session.scalars(
        select(Flash)
        .where(Flash.user_id == user_id, Flash.confirmed_at.is_(None))
        .order_by(Flash.created_at, Flash.id)
        .limit(limit)
    )
    return list(rows)


async def confirm_flash(
    sessions: async_sessionmaker[AsyncSession], redis: Redis, user_id: int, flash_id: int, reason: str
) -> bool:
    """Mark a flash seen; tells the user's other open tabs to drop it. False if not theirs."""
    if reason not in CONFIRM_REASONS:
        raise ValueError(f"unknown confirmation reason {reason!r}")
    async with sessions() as session, session.begin():
        flash = await session.get(Flash, flash_id)
        if flash is None or flash.user_id != user_id:
            return False
        if flash.confirmed_at is not None:
            return True
        flash.confirmed_at = utcnow()
        batch = EventBatch(session)
        await batch.emit(
            keys.user_topic(user_id), "flash.confirmed", {"id": flash_id, "reason": reason}, actor=f"user:{user_id}",
            actor_id=user_id,
        )
    await batch.publish(redis)
    return True
