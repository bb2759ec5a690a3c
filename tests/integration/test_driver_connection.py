"""The pool's asyncpg connection for a step's hot statements (PostgreSQL only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest
from sqlalchemy import JSON, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from core.db import driver_connection, driver_statement, make_engine, make_sessionmaker
from core.models import Base, Course, UTCDateTime
from tests.conftest import empty_database

ECHO = text("SELECT CAST(:data AS json) AS data, CAST(:at AS timestamptz) AS at").bindparams(
    bindparam("data", type_=JSON), bindparam("at", type_=UTCDateTime())
)


@pytest.fixture
async def pg_engine(tmp_path: object) -> AsyncIterator[AsyncEngine]:
    # One pooled connection and no overflow: a broken connection put back would be the next one used.
    async with empty_database("postgres", tmp_path) as url:  # type: ignore[arg-type]
        engine = make_engine(url, pool_size=1, max_overflow=0)
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield engine
        await engine.dispose()


async def test_values_are_sent_and_read_as_sqlalchemy_would(pg_engine: AsyncEngine) -> None:
    at = datetime(2026, 11, 30, 18, 0, tzinfo=timezone(timedelta(hours=2)))
    statement = driver_statement(ECHO, pg_engine)
    assert driver_statement(ECHO, pg_engine) is statement  # compiled once
    async with driver_connection(pg_engine) as connection:
        [row] = await statement.fetch(connection, {"data": {"score": 6.3, "spans": [[1, 2]]}, "at": at})
        assert row["data"] == {"score": 6.3, "spans": [[1, 2]]}
        assert row["at"] == at and row["at"].utcoffset() == timedelta(0)
        # The column type's own check runs: a naive datetime is refused before it is sent.
        with pytest.raises(ValueError, match="naive"):
            await statement.fetch(connection, {"data": {}, "at": datetime(2026, 11, 30)})


async def test_a_connection_the_database_closed_is_not_pooled_again(pg_engine: AsyncEngine) -> None:
    # As a database restart does to every pooled connection.
    with pytest.raises(asyncpg.exceptions.ConnectionDoesNotExistError):
        async with driver_connection(pg_engine) as connection:
            await connection.execute("SELECT pg_terminate_backend(pg_backend_pid())")
    async with driver_connection(pg_engine) as connection:
        assert await connection.fetchval("SELECT 1") == 1
    assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]


async def test_a_transaction_that_raised_leaves_nothing_and_the_pool_a_usable_connection(
    pg_engine: AsyncEngine,
) -> None:
    with pytest.raises(RuntimeError):
        async with driver_connection(pg_engine) as connection, connection.transaction():
            await connection.execute("INSERT INTO courses (code, title) VALUES ('C9', 'draft')")
            raise RuntimeError("handler failed")
    async with make_sessionmaker(pg_engine)() as session:
        assert await session.scalar(select(Course.title).where(Course.code == "C9")) is None
    async with driver_connection(pg_engine) as connection:
        assert not connection.is_in_transaction()
    assert pg_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
