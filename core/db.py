"""Async engine and sessions for PostgreSQL (asyncpg) and SQLite (aiosqlite)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any
from weakref import WeakKeyDictionary

from sqlalchemy import Select, event
from sqlalchemy import inspect as mapper_of
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.sql.elements import ClauseElement, Label
from sqlalchemy.util import greenlet_spawn


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
    engine = postgres_engine(sessions)
    if engine is None:
        return sessions
    made = _own_transaction_sessions.get(sessions)
    if made is None:
        made = _own_transaction_sessions[sessions] = async_sessionmaker(autocommit(engine), expire_on_commit=False)
    return made


def is_postgres(session_or_engine: AsyncSession | AsyncEngine) -> bool:
    bind = session_or_engine.bind if isinstance(session_or_engine, AsyncSession) else session_or_engine
    return bind is not None and bind.dialect.name == "postgresql"


def postgres_engine(sessions: async_sessionmaker[AsyncSession]) -> AsyncEngine | None:
    """The engine ``sessions`` are bound to when it is PostgreSQL's (for ``driver_connection``), else None."""
    engine = sessions.kw.get("bind")
    return engine if isinstance(engine, AsyncEngine) and engine.dialect.name == "postgresql" else None


class DriverStatement:
    """A statement compiled once for asyncpg, to run on the pool's own asyncpg connection.

    For the few statements every pipeline step runs: SQLAlchemy's execution path (events,
    execution context, result set-up, a greenlet hop per await) costs about three times
    asyncpg's own CPU per statement (~0.5 ms more, measured on this machine), and a step runs
    three. Values go through the statement's bind processors (JSON to text, UTC datetimes) as
    SQLAlchemy would send them; rows come back as asyncpg records, whose JSON and timestamps
    are already decoded by the codecs SQLAlchemy set on the connection.
    """

    def __init__(self, statement: ClauseElement, dialect: Dialect) -> None:
        self.compiled = statement.compile(dialect=dialect)
        self.sql = self.compiled.string
        # SQLAlchemy's own table of bind processors, as its execution context reads it.
        processors = self.compiled._bind_processors  # type: ignore[attr-defined]
        order = self.compiled.positiontup or ()  # type: ignore[attr-defined]
        self.arguments_in_order = [(name, processors.get(name)) for name in order]

    def arguments(self, parameters: Mapping[str, Any]) -> list[Any]:
        values = self.compiled.construct_params(dict(parameters)) or {}
        return [values[name] if process is None else process(values[name]) for name, process in self.arguments_in_order]

    async def fetch(self, connection: Any, parameters: Mapping[str, Any]) -> list[Any]:
        rows: list[Any] = await connection.fetch(self.sql, *self.arguments(parameters))
        return rows


_driver_statements: WeakKeyDictionary[ClauseElement, DriverStatement] = WeakKeyDictionary()


def driver_statement(statement: ClauseElement, engine: AsyncEngine) -> DriverStatement:
    """``statement`` compiled for ``engine``'s dialect, once."""
    made = _driver_statements.get(statement)
    if made is None:
        made = _driver_statements[statement] = DriverStatement(statement, engine.dialect)
    return made


async def driver_rows(engine: AsyncEngine, statement: ClauseElement, parameters: Mapping[str, Any]) -> list[Any]:
    """``statement`` run on its own (its own transaction) on a pooled asyncpg connection; its rows."""
    async with driver_connection(engine) as connection:
        return await driver_statement(statement, engine).fetch(connection, parameters)


async def rows_of(
    sessions: async_sessionmaker[AsyncSession], statement: Select[Any], parameters: Mapping[str, Any]
) -> list[Any]:
    """``statement``'s rows, each readable by column name: on PostgreSQL run on its own on the
    pool's asyncpg connection (``driver_rows``), elsewhere through a session."""
    engine = postgres_engine(sessions)
    if engine is not None:
        return await driver_rows(engine, statement, parameters)
    async with sessions() as session:
        return list((await session.execute(statement, dict(parameters))).mappings())


def entity_columns(*models: type[Any]) -> list[Label[Any]]:
    """Every mapped column of each model, labelled ``<place>_<attribute>``: a select of whole
    entities that ``entities_from`` turns back into instances, without the ORM's loading."""
    return [
        attribute.columns[0].label(f"{place}_{attribute.key}")
        for place, model in enumerate(models)
        for attribute in mapper_of(model).column_attrs
    ]


def entities_from(row: Any, *models: type[Any]) -> list[Any]:
    """The instances in ``row`` (a row of a select of ``entity_columns(*models)``), detached with
    their identities as a closed session leaves what it read: a session they reach later takes
    them as rows that exist, never as new ones to insert."""
    instances = []
    for place, model in enumerate(models):
        instance = model(**{a.key: row[f"{place}_{a.key}"] for a in mapper_of(model).column_attrs})
        make_transient_to_detached(instance)
        instances.append(instance)
    return instances


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled PostgreSQL connection as asyncpg's own (see DriverStatement), back to the pool after.

    Every statement is its own transaction unless the caller opens one
    (``connection.transaction()``), which must end inside the block. After a block
    that raised, the connection is discarded, not pooled again: the database may have
    closed it, or a cancelled query may still be running on it.
    """
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    except BaseException:
        await greenlet_spawn(pooled.invalidate)  # closes it and gives its place back
        raise
    # In a greenlet: returning an overflow connection closes it, which awaits.
    await greenlet_spawn(pooled.close)
