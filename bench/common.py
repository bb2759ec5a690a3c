"""What the benchmarks share: a database of their own, seeded users, processes, load."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from core.auth import hash_password, sign
from core.clock import utcnow
from core.db import make_engine, make_sessionmaker, transaction
from core.models import Assignment, Base, Course, Enrolment, User, WebSession

PG_ADMIN_DSN = os.environ.get("HANDIN_BENCH_PG_DSN", "postgresql://postgres@127.0.0.1:5432/postgres")
# The benchmarks' own Redis database: never the one `make run` (0) or the tests (13) use.
BENCH_REDIS_URL = os.environ.get("HANDIN_BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")
SECRET = "bench-secret"
WEB_SESSION_PURPOSE = "web-session"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def bench_database() -> AsyncIterator[str]:
    """A PostgreSQL database of this run's own, with the schema; dropped afterwards."""
    name = f"handin_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    engine = make_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()
    try:
        yield url
    finally:
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@dataclass
class Seeded:
    assignment_id: int
    cookies: list[str] = field(default_factory=list)


async def seed_students(database_url: str, students: int, max_bytes: int = 4 * 1024 * 1024) -> Seeded:
    """One course, one open assignment, and `students` logged-in students (their cookies)."""
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    now = utcnow()
    password_hash = hash_password(secrets.token_urlsafe(8))
    async with transaction(sessions) as session:
        course = Course(code=f"BENCH-{uuid.uuid4().hex[:6]}", title="Benchmark")
        session.add(course)
        await session.flush()
        assignment = Assignment(
            course_id=course.id, title="Load", opens_at=now - timedelta(hours=1),
            deadline=now + timedelta(days=1), cutoff_at=now + timedelta(days=2),
            max_bytes=max_bytes, accepted_types=["text", "pdf", "image"], max_attempts=100,
        )
        users = [User(email=f"s{i}@bench.test", name=f"S{i}", password_hash=password_hash) for i in range(students)]
        session.add(assignment)
        session.add_all(users)
        await session.flush()
        session.add_all(Enrolment(user_id=user.id, course_id=course.id, role="student") for user in users)
        expires = now + timedelta(hours=6)
        seeded = Seeded(assignment.id)
        for user in users:
            session_id = secrets.token_urlsafe(24)
            session.add(WebSession(id=session_id, user_id=user.id, expires_at=expires))
            payload = {"sid": session_id, "exp": int(expires.timestamp())}
            seeded.cookies.append(sign(payload, SECRET, WEB_SESSION_PURPOSE))
    await engine.dispose()
    return seeded


def bench_env(database_url: str, var_dir: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        HANDIN_DATABASE_URL=database_url,
        HANDIN_REDIS_URL=BENCH_REDIS_URL,
        HANDIN_SECRET_KEY=SECRET,
        HANDIN_STORAGE__INCOMING_DIR=str(var_dir / "incoming"),
        HANDIN_STORAGE__ROOT=str(var_dir / "store"),
        HANDIN_STORAGE__QUARANTINE_DIR=str(var_dir / "quarantine"),
        HANDIN_STORAGE__THUMBNAILS_DIR=str(var_dir / "thumbnails"),
        HANDIN_SMTP__OUTBOX_DIR=str(var_dir / "outbox"),
        HANDIN_WORKER__HTTP_PORT="0",
        HANDIN_LOG_LEVEL="WARNING",
    )
    env.update(extra)
    return env


@contextmanager
def running(args: list[str], env: dict[str, str], health_url: str | None = None) -> Any:
    """A child process for the duration of the block, waited for until healthy."""
    process = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if health_url:
            deadline = time.monotonic() + 30
            while True:
                try:
                    if httpx.get(health_url, timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{args} did not become healthy")
                time.sleep(0.2)
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and all its live descendants (Linux /proc).

    On a shared machine latency moves with everyone else's load; CPU spent per
    request does not, so the benchmarks print both.
    """
    children: dict[int, list[int]] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        total += times.get(current, 0.0)
        todo.extend(children.get(current, []))
    return total


def handin(*args: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", *args]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[min(998, max(0, int(q * 1000) - 1))]


@dataclass
class LoadResult:
    latencies_ms: list[float]
    errors: int
    elapsed_s: float

    @property
    def achieved_per_s(self) -> float:
        return len(self.latencies_ms) / self.elapsed_s if self.elapsed_s else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "p50_ms": percentile(self.latencies_ms, 0.50),
            "p95_ms": percentile(self.latencies_ms, 0.95),
            "p99_ms": percentile(self.latencies_ms, 0.99),
            "ok_per_s": self.achieved_per_s,
            "errors": self.errors,
            "server_cpu_ms": float("nan"),
        }


async def open_loop(rate: float, count: int, send: Callable[[int], Awaitable[bool]]) -> LoadResult:
    """Start request i at t0 + i/rate whatever came before (no coordinated omission):
    latency counts from when the request was due, not from when it got out."""
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter()

    async def one(index: int) -> None:
        nonlocal errors
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        ok = await send(index)
        if ok:
            latencies.append((time.perf_counter() - due) * 1000)
        else:
            errors += 1

    await asyncio.gather(*(one(i) for i in range(count)))
    return LoadResult(latencies, errors, time.perf_counter() - start)


def row(label: str, figures: dict[str, float]) -> str:
    return (
        f"{label:<28} p50 {figures['p50_ms']:8.1f} ms  p95 {figures['p95_ms']:8.1f} ms  "
        f"p99 {figures['p99_ms']:8.1f} ms  {figures['ok_per_s']:7.1f}/s  errors {int(figures['errors'])}"
        f"  server CPU {figures['server_cpu_ms']:5.1f} ms/upload"
    )
