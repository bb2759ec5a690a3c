"""The web session look-up every authenticated request makes (api.deps), on both databases."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from api.deps import _web_session_and_user
from core.clock import utcnow
from core.models import User, WebSession


async def test_the_session_and_its_user_are_read_as_stored_and_behave_as_rows_that_exist(
    factory: Any, sessions: async_sessionmaker[AsyncSession]
) -> None:
    owner = await factory.user("student")
    expires = utcnow() + timedelta(hours=1)
    async with sessions() as db, db.begin():
        db.add(WebSession(id="s-1", user_id=owner.id, expires_at=expires))

    found = await _web_session_and_user(sessions, "s-1")

    assert found is not None
    web_session, user = found
    assert (web_session.id, web_session.user_id, web_session.revoked_at) == ("s-1", owner.id, None)
    assert web_session.expires_at == expires and web_session.expires_at.utcoffset() == timedelta(0)
    assert (user.id, user.email, user.name, user.is_service) == (owner.id, owner.email, owner.name, False)
    assert await _web_session_and_user(sessions, "no-such-session") is None
    # Handed to a later session, they are the existing rows: changed, not inserted again.
    async with sessions() as db, db.begin():
        db.add(user)
        user.name = "Renamed"
    async with sessions() as db:
        assert await db.scalar(select(func.count()).select_from(User).where(User.email == owner.email)) == 1
        assert await db.scalar(select(User.name).where(User.id == owner.id)) == "Renamed"
