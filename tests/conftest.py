"""Shared fixtures: real PostgreSQL and SQLite databases, a private Redis db.

Every fixture module under tests/fixtures/ is loaded as a plugin, so each
service (clamd, SMTP, S3, the running system) keeps its fixtures in a file
of its own.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from core.db import make_engine, make_sessionmaker
from core.models import Base
from core.settings import Settings
from tests.services import local_settings, start_redis_server

pytest_plugins = sorted(
    f"tests.fixtures.{path.stem}"
    for path in (Path(__file__).parent / "fixtures").glob("*.py")
    if path.stem != "__init__"
)

PG_ADMIN_DSN = os.environ.get("HANDIN_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")


# The process that started the server HANDIN_TEST_REDIS_URL names, when the suite started it.
_REDIS_STARTED_BY = "HANDIN_TEST_REDIS_STARTED_BY"


def _suite_redis_url() -> str:
    """The suite's own Redis server, started for this run and stopped at its end.

    Not a database number on the shared server: pub/sub channels span every
    database of a server, so `make run` or another run's events would reach
    our subscribers. HANDIN_TEST_REDIS_URL points the suite elsewhere.
    Each process of a parallel run (pytest -n) starts a server of its own:
    one test's flush must not empty another's database; a server given by
    HANDIN_TEST_REDIS_URL would be shared, so a parallel run refuses one.
    """
    given = os.environ.get("HANDIN_TEST_REDIS_URL")
    if given and os.environ.get(_REDIS_STARTED_BY) in (None, str(os.getpid())):
        return given
    process, url = start_redis_server(Path(tempfile.mkdtemp(prefix="handin-test-redis-")))
    atexit.register(process.kill)
    os.environ["HANDIN_TEST_REDIS_URL"] = url
    os.environ[_REDIS_STARTED_BY] = str(os.getpid())
    return url


TEST_REDIS_URL = _suite_redis_url()


def pytest_configure(config: pytest.Config) -> None:
    """A Redis server given by HANDIN_TEST_REDIS_URL would be shared by a parallel run's processes,
    each flushing the others' jobs: refused, saying what to do instead."""
    processes = len(config.getoption("tx", None) or []) if config.getoption("dist", "no") != "no" else 1
    if processes > 1 and os.environ.get(_REDIS_STARTED_BY) is None:
        raise pytest.UsageError(
            "HANDIN_TEST_REDIS_URL names one Redis server for every test process, and each process empties "
            "its database around every test: run with one process (`make test PYTEST_ARGS=`, or pytest "
            "without -n), or leave HANDIN_TEST_REDIS_URL unset so that each process starts a server of its own"
        )


def pg_url(database: str) -> str:
    base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
    return f"{base}/{database}"


async def create_pg_database() -> str:
    name = f"handin_test_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return name


async def drop_pg_database(name: str) -> None:
    connection = await asyncpg.connect(PG_ADMIN_DSN)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


@asynccontextmanager
async def empty_database(kind: str, folder: Path) -> AsyncIterator[str]:
    """The URL of a new database without tables: a SQLite file in ``folder`` or a PostgreSQL
    database of its own (``kind`` "postgres"), dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{folder}/handin.db"
        return
    name = await create_pg_database()
    try:
        yield pg_url(name)
    finally:
        await drop_pg_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """An empty database of each kind, with the schema, dropped afterwards."""
    async with empty_database(request.param, tmp_path) as url:
        engine = make_engine(url)
        async with engine.begin() as connection:
            await connection.run_sync(Base.metadata.create_all)
        await engine.dispose()
        yield url


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = make_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return make_sessionmaker(engine)


@pytest.fixture
async def redis() -> AsyncIterator[Redis]:
    """The suite's own Redis database, emptied before and after each test."""
    client: Redis = Redis.from_url(TEST_REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Iterator[Settings]:
    """Settings pointing every component at this test's own database, Redis and folders."""
    yield local_settings(database_url, TEST_REDIS_URL, tmp_path)


# Folders whose tests share one expensive session fixture: in a parallel run each goes
# to one process, so the control plane starts, and the images build, once.
_SHARED_SESSION_FOLDERS = {"tests/cluster/": "envtest", "tests/images/": "podman", "tests/e2e/": "kind"}


def parallel_group(nodeid: str) -> str:
    """What a parallel run (pytest -n) keeps in one process: a folder above, else the test's module
    (its module-scoped fixtures, such as the running system, start once)."""
    module = nodeid.split("::", 1)[0]
    return next((group for folder, group in _SHARED_SESSION_FOLDERS.items() if module.startswith(folder)), module)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """Whole groups (parallel_group) to each process, as `--dist loadscope` sends whole modules."""
    from xdist.scheduler import LoadScopeScheduling

    class GroupScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return parallel_group(nodeid)

    return GroupScheduling(config, log)
