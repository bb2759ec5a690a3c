"""`handin migrate` builds exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from core.db import make_engine
from core.migrate import alembic_config, upgrade
from core.models import Base
from tests.conftest import empty_database


def _differences(connection: object) -> list[object]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})  # type: ignore[arg-type]
    return list(compare_metadata(context, Base.metadata))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_migrations_match_the_models(kind: str, tmp_path: Path) -> None:
    async with empty_database(kind, tmp_path) as url:
        # Alembic runs its own event loop, as `handin migrate` does.
        await asyncio.to_thread(upgrade, url)
        await asyncio.to_thread(upgrade, url)  # a second run changes nothing and does not fail
        engine = make_engine(url)
        async with engine.connect() as connection:
            differences = await connection.run_sync(_differences)
        await engine.dispose()
    assert differences == []


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_fingerprints_keep_their_rows_and_order_when_keyed_by_submission(kind: str, tmp_path: Path) -> None:
    """Rows indexed before 0006 are numbered per submission in the order they were written; the
    trigger that removes them with their submission survives SQLite's copy of the table."""
    async with empty_database(kind, tmp_path) as url:
        await asyncio.to_thread(upgrade, url, "0005_fingerprints")
        engine = make_engine(url)
        written = [(11, 1000), (12, 2000), (11, 1001), (12, 2001), (11, 1002)]  # two submissions, interleaved
        async with engine.begin() as connection:
            for submission_id, value in written:
                await connection.execute(
                    text(
                        "INSERT INTO fingerprints (assignment_id, hash, submission_id, position) VALUES (1, :h, :s, 0)"
                    ),
                    {"h": value, "s": submission_id},
                )
        await asyncio.to_thread(upgrade, url)
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text("SELECT submission_id, ordinal, hash FROM fingerprints ORDER BY submission_id, ordinal")
                )
            ).all()
            trigger = (
                "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND name = 'submissions_forget_fingerprints'"
                if kind == "sqlite"
                else "SELECT count(*) FROM pg_trigger WHERE tgname = 'submissions_forget_fingerprints'"
            )
            triggers = (await connection.execute(text(trigger))).scalar_one()
        # And back: serial ids again, in the same order.
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0005_fingerprints")
        async with engine.connect() as connection:
            by_id = (await connection.execute(text("SELECT submission_id, hash FROM fingerprints ORDER BY id"))).all()
            triggers_after_downgrade = (await connection.execute(text(trigger))).scalar_one()
        await engine.dispose()
    assert [tuple(row) for row in rows] == [(11, 0, 1000), (11, 1, 1001), (11, 2, 1002), (12, 0, 2000), (12, 1, 2001)]
    assert triggers == 1
    assert [tuple(row) for row in by_id] == [(11, 1000), (11, 1001), (11, 1002), (12, 2000), (12, 2001)]
    assert triggers_after_downgrade == 1


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_events_keep_one_index_on_topic_and_seq_and_it_stays_unique(kind: str, tmp_path: Path) -> None:
    """0007 drops the second, identical index on events (topic, seq); the unique one stays, so a
    topic still cannot hold one seq twice. Downgrading restores the dropped index."""
    indexes = (
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' ORDER BY name"
        if kind == "sqlite"
        else "SELECT indexname FROM pg_indexes WHERE tablename = 'events' AND indexname <> 'events_pkey' ORDER BY 1"
    )
    insert = text(
        "INSERT INTO events (topic, seq, type, at, data, actor) VALUES ('t', 1, 'x', CURRENT_TIMESTAMP, '{}', 'a')"
    )
    async with empty_database(kind, tmp_path) as url:
        await asyncio.to_thread(upgrade, url)
        engine = make_engine(url)
        async with engine.connect() as connection:
            now = [row[0] for row in (await connection.execute(text(indexes))).all()]
        async with engine.begin() as connection:
            await connection.execute(insert)
        with pytest.raises(IntegrityError):
            async with engine.begin() as connection:
                await connection.execute(insert)
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0006_fingerprint_key")
        async with engine.connect() as connection:
            before = [row[0] for row in (await connection.execute(text(indexes))).all()]
        await engine.dispose()
    assert len(now) == 1 and "ix_events_topic_seq" not in now
    assert "ix_events_topic_seq" in before and len(before) == 2


async def test_the_int8_vector_domain_is_created_by_migrating_and_dropped_by_going_back(tmp_path: Path) -> None:
    """0008 creates the domain the similarity check's arrays are sent as; without it every check
    on a migrated PostgreSQL would fail. Downgrading drops it again."""
    domains = text("SELECT typname FROM pg_type WHERE typtype = 'd' AND typname = 'int8_vector'")
    async with empty_database("postgres", tmp_path) as url:
        await asyncio.to_thread(upgrade, url)
        engine = make_engine(url)
        async with engine.connect() as connection:
            created = (await connection.execute(domains)).scalars().all()
            cast = await connection.scalar(text("SELECT CAST(ARRAY[1, -2] AS int8_vector)"))
        await asyncio.to_thread(command.downgrade, alembic_config(url), "0007_events_one_index")
        async with engine.connect() as connection:
            after = (await connection.execute(domains)).scalars().all()
        await engine.dispose()
    assert created == ["int8_vector"] and cast == [1, -2]
    assert after == []
