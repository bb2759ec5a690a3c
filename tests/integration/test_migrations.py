"""`handin migrate` builds exactly the schema the models describe, on both databases."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from core.db import make_engine
from core.migrate import upgrade
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
