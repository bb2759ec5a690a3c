"""The pool's asyncpg connection for a step's hot statements, and the arrays it sends from numpy (PostgreSQL only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone

import asyncpg
import numpy as np
import pytest
from sqlalchemy import JSON, bindparam, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from core import int8_vectors
from core.db import driver_connection, driver_statement, make_engine, make_sessionmaker
from core.models import Base, Course, UTCDateTime
from tests.conftest import empty_database

EXTREMES = [-(2**63), -1, 0, 1, 2**63 - 1]
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


async def test_numpy_arrays_and_lists_arrive_as_the_same_bigints(pg_engine: AsyncEngine) -> None:
    values = np.array([*EXTREMES, 7_777_777_777], dtype=np.int64)
    async with driver_connection(pg_engine) as connection:
        await int8_vectors.prepare(connection)
        sent = "SELECT CAST($1 AS int8_vector) AS v, cardinality(CAST($1 AS int8_vector)) AS n"
        row = await connection.fetchrow(sent, values)
        assert row["v"] == values.tolist() and row["n"] == len(values)
        assert (await connection.fetchrow(sent, EXTREMES))["v"] == EXTREMES
        assert (await connection.fetchrow(sent, np.array([5, 6], dtype=np.int32)))["v"] == [5, 6]
        empty = await connection.fetchrow(sent, np.zeros(0, np.int64))
        assert empty["v"] == [] and empty["n"] == 0
        # unnest keeps the order, as the fingerprints' ordinals need.
        unnested = await connection.fetch("SELECT x FROM unnest(CAST($1 AS int8_vector)) AS t(x)", values)
        assert [r["x"] for r in unnested] == values.tolist()


async def test_what_is_not_a_list_of_integers_is_refused_with_the_reason(pg_engine: AsyncEngine) -> None:
    async with driver_connection(pg_engine) as connection:
        await int8_vectors.prepare(connection)
        for wrong in (np.array([1.5, 2.0]), np.array([[1, 2], [3, 4]]), [1, None], np.array([True])):
            with pytest.raises(Exception, match="int8_vector takes a one-dimensional sequence of integers"):
                await connection.fetchval("SELECT CAST($1 AS int8_vector)", wrong)
        # The connection is still usable, and other bigint[] parameters keep asyncpg's own codec.
        assert await connection.fetchval("SELECT CAST($1 AS bigint[])", [1, None]) == [1, None]


async def test_a_connection_without_the_codec_takes_lists_as_any_bigint_array(pg_engine: AsyncEngine) -> None:
    # A statement through SQLAlchemy's session, or EXPLAIN in a test, sends through asyncpg's own codec.
    async with driver_connection(pg_engine) as connection:
        assert await connection.fetchval("SELECT CAST($1 AS int8_vector)", EXTREMES) == EXTREMES
