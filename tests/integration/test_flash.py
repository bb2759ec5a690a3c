"""Flash messages: stored per user, pushed live on user.<id>, shown until confirmed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from redis.asyncio import Redis
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.flash import FlashSpec, confirm_flash, pending_flashes, push_flash
from core.models import Flash
from tests.fixtures.conditions import subscribed
from tests.fixtures.factories import Factory


async def next_message(pubsub: Any) -> dict[str, Any]:
    async with asyncio.timeout(2.0):
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                return json.loads(message["data"])


async def test_a_flash_is_stored_and_pushed_live_to_its_user(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    user = await factory.user("student")
    pubsub = await subscribed(redis, keys.events_channel(keys.user_topic(user.id)))
    try:
        flash = await push_flash(
            sessions, redis, user.id, FlashSpec(text="Receipt sent", kind="success", link_url="/submissions/1")
        )
        assert flash is not None
        event = await next_message(pubsub)
    finally:
        await pubsub.aclose()
    assert event["type"] == "flash"
    assert event["topic"] == f"user.{user.id}"
    assert event["data"]["id"] == flash.id
    assert event["data"]["text"] == "Receipt sent"
    async with sessions() as session:
        assert [f.id for f in await pending_flashes(session, user.id)] == [flash.id]


async def test_the_same_dedupe_key_never_makes_a_second_flash(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    user = await factory.user("student")
    spec = FlashSpec(text="Grades are out", dedupe_key=f"test:{user.id}")
    assert await push_flash(sessions, redis, user.id, spec) is not None
    assert await push_flash(sessions, redis, user.id, spec) is None
    async with sessions() as session:
        count = await session.scalar(select(func.count(Flash.id)).where(Flash.user_id == user.id))
    assert count == 1


async def test_a_confirmed_flash_is_not_shown_again_and_only_its_owner_can_confirm(
    factory: Factory, sessions: async_sessionmaker[AsyncSession], redis: Redis
) -> None:
    owner, other = await factory.user("student"), await factory.user("student")
    flash = await push_flash(sessions, redis, owner.id, FlashSpec(text="Hello"))
    assert flash is not None
    assert await confirm_flash(sessions, redis, other.id, flash.id, "seen") is False
    async with sessions() as session:
        assert len(await pending_flashes(session, owner.id)) == 1
    assert await confirm_flash(sessions, redis, owner.id, flash.id, "seen") is True
    async with sessions() as session:
        assert await pending_flashes(session, owner.id) == []
