"""Arrays sent from numpy as ``int8_vector`` parameters (core.int8_vectors), on PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from core import int8_vectors
from core.db import driver_connection, make_engine
from core.models import Base
from tests.conftest import empty_database

EXTREMES = [-(2**63), -1, 0, 1, 2**63 - 1]


@pytest.fixture
async def pg_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with empty_database("postgres", tmp_path) as url:
        engine = make_engine(url, pool_size=1, max_overflow=0)
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        yield engine
        await engine.dispose()


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
