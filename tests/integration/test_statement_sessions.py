"""Statement sessions: on PostgreSQL each statement commits on its own; SQLite keeps its transactions."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.db import is_postgres, make_engine, make_sessionmaker, statement_sessions
from core.models import Course


async def test_a_write_is_seen_by_others_before_its_session_ends(
    database_url: str, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as session, session.begin():
        session.add(Course(code="C1", title="before"))
    own_transactions = statement_sessions(sessions)
    assert statement_sessions(sessions) is own_transactions  # made once
    # A reader that never waits for SQLite's write lock (its transactions begin deferred).
    reader_engine = make_engine(database_url, mostly_reads=True)
    try:
        async with own_transactions() as writer, writer.begin():
            await writer.execute(update(Course).where(Course.code == "C1").values(title="after"))
            async with make_sessionmaker(reader_engine)() as reader:
                seen = await reader.scalar(select(Course.title).where(Course.code == "C1"))
            # PostgreSQL: committed by the statement itself. SQLite: the same sessions, one transaction.
            assert seen == ("after" if is_postgres(writer) else "before")
    finally:
        await reader_engine.dispose()
    async with sessions() as reader:
        assert await reader.scalar(select(Course.title).where(Course.code == "C1")) == "after"
