"""Async engine and sessions for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine


def make_engine(url: str, *, mostly_reads: bool = False, **kwargs: Any) -> AsyncEngine:
    """`mostly_reads`: a process whose transactions read, or write first (the router's
    authorisation look-ups). On SQLite its transactions then begin deferred, so its
    reads never queue behind the workers' write lock."""
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30}, **kwargs)
        _serialise_sqlite_writers(engine, immediate=not mostly_reads)
        return engine
    # No ping per checkout: it costs a round trip each time (three per upload).
    # A connection broken by a database restart fails one query and is
    # replaced; recycling bounds how stale a pooled connection can get.
    kwargs.setdefault("pool_pre_ping", False)
    kwargs.setdefault("pool_recycle", 300)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    return create_async_engine(url, **kwargs)


def _serialise_sqlite_writers(engine: AsyncEngine, immediate: bool = True) -> None:
    """Take SQLite's write lock at BEGIN, so read-then-write transactions never
    deadlock into "database is locked", and use WAL so readers don't block."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def make_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


@asynccontextmanager
async def transaction(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessions() as session, session.begin():
        yield session


_autocommit_engines: WeakKeyDictionary[AsyncEngine, AsyncEngine] = WeakKeyDictionary()


def autocommit(engine: AsyncEngine) -> AsyncEngine:
    """`engine` with every statement its own transaction: no BEGIN and COMMIT round trips, for a
    single statement (atomic on its own) or reads that need no common snapshot. Made once per engine."""
    made = _autocommit_engines.get(engine)
    if made is None:
        made = _autocommit_engines[engine] = engine.execution_options(isolation_level="AUTOCOMMIT")
    return made


_own_transaction_sessions: WeakKeyDictionary[async_sessionmaker[AsyncSession], async_sessionmaker[AsyncSession]] = (
    WeakKeyDictionary()
)


def statement_sessions(sessions: async_sessionmaker[AsyncSession]) -> async_sessionmaker[AsyncSession]:
    """Sessions like ``sessions`` whose every statement is its own transaction, on PostgreSQL: for
    reads that need no common snapshot and single statements (atomic on their own), without the
    BEGIN and COMMIT or ROLLBACK round trips around them. SQLite keeps ``sessions`` (its writers
    take the lock at BEGIN): use them the same way, in ``session.begin()`` when they write."""
    engine = sessions.kw.get("bind")
    if not isinstance(engine, AsyncEngine) or engine.dialect.name != "postgresql":
        return sessions
    made = _own_transaction_sessions.get(sessions)
    if made is None:
        made = _own_transaction_sessions[sessions] = async_sessionmaker(autocommit(engine), expire_on_commit=False)
    return made


def is_postgres(session_or_engine: AsyncSession | AsyncEngine) -> bool:
    bind = session_or_engine.bind if isinstance(session_or_engine, AsyncSession) else session_or_engine
    return bind is not None and bind.dialect.name == "postgresql"
