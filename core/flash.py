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
from urllib.parse import unquote, urlsplit

from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import isoformat, utcnow
from core.events import EventBatch
from core.models import Flash
from core.unit_of_work import unit_of_work

Kind = Literal["info", "success", "warning", "error"]
KINDS: frozenset[str] = frozenset({"info", "success", "warning", "error"})
CONFIRM_REASONS: frozenset[str] = frozenset({"seen", "dismissed", "clicked"})
# Never in a link's path: a backslash reads as "/" to browsers, a TAB or newline is dropped by them.
_UNSAFE_IN_PATH = frozenset(chr(code) for code in [*range(0x20), 0x7F]) | {"\\"}
OPEN_PREFIX = "open:"


def same_site_path(target: str) -> bool:
    """Whether a flash may link or post to `target`: a path on this site, as the login's ``next``.

    Refused: anything not starting with exactly one ``/`` (``//evil.example``, absolute URLs,
    ``javascript:``), backslashes and control characters, also once percent-decoded.
    """
    for candidate in (target, unquote(target)):
        if not candidate.startswith("/") or candidate.startswith("//") or _UNSAFE_IN_PATH.intersection(candidate):
            return False
    parts = urlsplit(target)
    return not (parts.scheme or parts.netloc)


def check_links(spec: FlashSpec) -> None:
    """Refuse a flash whose link or button would take the user off the site (util.js safeNext agrees)."""
    if spec.link_url is not None and not same_site_path(spec.link_url):
        raise ValueError(f"a flash links only to a path on this site, not {spec.link_url!r}")
    if spec.button_action is not None:
        action = spec.button_action.removeprefix(OPEN_PREFIX)
        if not same_site_path(action):
            raise ValueError(f"a flash button posts or opens only a path on this site, not {spec.button_action!r}")


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
    check_links(spec)
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
    async with unit_of_work(sessions, redis) as work:
        return await add_flash(work, user_id, spec)


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
    async with unit_of_work(sessions, redis) as work:
        flash = await work.session.get(Flash, flash_id)
        if flash is None or flash.user_id != user_id:
            return False
        if flash.confirmed_at is not None:
            return True
        flash.confirmed_at = utcnow()
        await work.emit(
            keys.user_topic(user_id),
            "flash.confirmed",
            {"id": flash_id, "reason": reason},
            actor=f"user:{user_id}",
            actor_id=user_id,
        )
    return True
