"""What the benchmarks share: a database of their own, seeded users, processes, load."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
from core.models import Assignment, Course, Enrolment, User, WebSession

REPO_ROOT = Path(__file__).resolve().parents[1]

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
async def bench_database(source: Path | None = None) -> AsyncIterator[str]:
    """A PostgreSQL database of this run's own, with the schema (of the code in `source`, a
    baseline's tree, if given); dropped afterwards."""
    name = f"handin_bench_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(PG_ADMIN_DSN)
    await admin.execute(f'CREATE DATABASE "{name}"')
    await admin.close()
    url = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{name}"
    # Built by a process importing the models of the code measured: a baseline's schema may differ.
    tree = source or REPO_ROOT
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CREATE_SCHEMA, url],
        env=source_env(dict(os.environ), tree),
        cwd=tree,
        check=True,
    )
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
            course_id=course.id,
            title="Load",
            opens_at=now - timedelta(hours=1),
            deadline=now + timedelta(days=1),
            cutoff_at=now + timedelta(days=2),
            max_bytes=max_bytes,
            accepted_types=["text", "pdf", "image"],
            max_attempts=100,
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


CSRF_META = re.compile(r'<meta name="csrf-token" content="([^"]*)"')


@dataclass
class Browser:
    """What one student's browser sends with a change: its cookies, the site's Origin and the page's CSRF token."""

    cookies: dict[str, str]
    origin: str
    token: str

    def headers(self) -> dict[str, str]:
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        return {"Cookie": cookie, "Origin": self.origin, "X-CSRF-Token": self.token}


async def open_pages(base_url: str, sessions: list[str], concurrency: int = 20) -> list[Browser]:
    """Each logged-in student loads a page once, as a browser would before uploading: the api sets the
    CSRF cookie and renders the token bound to it and the session in a <meta> tag. `base_url` must be
    the server's public URL (HANDIN_PUBLIC_URL), whose origin the api accepts changes from."""
    gate = asyncio.Semaphore(concurrency)
    origin = base_url.rstrip("/")

    async def one(http: httpx.AsyncClient, session: str) -> Browser:
        async with gate:
            # A Cookie header of its own: the client's shared jar would mix students up.
            page = await http.get("/login", headers={"Cookie": f"handin_session={session}"})
        page.raise_for_status()
        found = CSRF_META.search(page.text)
        if found is None:
            raise RuntimeError("/login carries no csrf-token meta tag")
        return Browser({"handin_session": session, **dict(page.cookies.items())}, origin, found.group(1))

    async with httpx.AsyncClient(base_url=base_url, timeout=60) as http:
        return list(await asyncio.gather(*(one(http, session) for session in sessions)))


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
    )
    env.update(extra)
    return env


@contextmanager
def running(
    args: list[str],
    env: dict[str, str],
    health_url: str | None = None,
    log: Path | None = None,
    cwd: Path | None = None,
) -> Any:
    """A child process for the duration of the block, waited for until healthy; its output to `log` if given."""
    output: Any = open(log, "ab") if log is not None else subprocess.DEVNULL
    process = subprocess.Popen(args, env=env, stdout=output, stderr=output, cwd=cwd)
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
        if log is not None:
            output.close()


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


@contextmanager
def source_tree(ref: str | None) -> Iterator[Path]:
    """This checkout, or the tree of git `ref` unpacked in a temporary directory (a baseline)."""
    if ref is None:
        yield REPO_ROOT
        return
    with tempfile.TemporaryDirectory(prefix="handin-baseline-") as path:
        archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", ref], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", path], input=archive, check=True)
        yield Path(path)


# The schema of the code on the path, in the database named by argv[1].
CREATE_SCHEMA = """
import asyncio, sys
from core.db import make_engine
from core.models import Base

async def create():
    engine = make_engine(sys.argv[1])
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()

asyncio.run(create())
"""


def source_env(env: dict[str, str], source: Path) -> dict[str, str]:
    """`env` for a process that imports handin from `source` (run it with cwd=source: `-m` puts cwd first)."""
    return {**env, "PYTHONPATH": str(source)}


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


# --- processes the pipeline bench measures ----------------------------------------------------

EICAR_SIGNATURE = "Bench-Eicar"
# Split so this file is not itself flagged by a scanner.
EICAR = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$" + b"EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"


def start_clamd(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A clamd of the bench's own with one local signature (no freshclam, no network)."""
    port = free_port()
    database = directory / "db"
    database.mkdir(parents=True, exist_ok=True)
    (database / "bench.ndb").write_text(f"{EICAR_SIGNATURE}:0:*:{EICAR.hex()}\n")
    config = directory / "clamd.conf"
    config.write_text(
        "\n".join(
            [
                f"DatabaseDirectory {database}",
                f"TCPSocket {port}",
                "TCPAddr 127.0.0.1",
                f"PidFile {directory / 'clamd.pid'}",
                f"LogFile {directory / 'clamd.log'}",
                "Foreground yes",
                "StreamMaxLength 64M",
                "SelfCheck 3600",
                "",
            ]
        )
    )
    process = subprocess.Popen(
        ["clamd", "--config-file", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(b"zPING\0")
                if sock.recv(16).startswith(b"PONG"):
                    return process, port
        except OSError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("clamd did not start")


class AdminStandIn:
    """The central admin system as a local HTTP server: answers 200 with a reference to every POST."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        stand_in = self
        self.received = 0

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as a real admin system would offer

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                stand_in.received += 1
                body = b'{"reference":"bench"}'
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/records"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU of one process; None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class BackendCpu:
    """CPU of the PostgreSQL backends serving one database, sampled while a run lasts.

    Backends are children of the postmaster, shared with every other database on
    the server: only those whose `pg_stat_activity.datname` is the bench's own
    count. Sampled every `interval` seconds, so a backend that exits between two
    samples loses at most its last interval (pools keep theirs open for minutes).
    """

    def __init__(self, database: str, interval: float = 0.5) -> None:
        self.database = database
        self.interval = interval
        self.latest: dict[int, float] = {}
        self.start: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def _pids(self, connection: asyncpg.Connection) -> list[int]:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", self.database
        )
        return [int(row["pid"]) for row in rows]

    async def _sample(self, connection: asyncpg.Connection) -> None:
        for pid in await self._pids(connection):
            value = process_cpu_seconds(pid)
            if value is not None:
                self.latest[pid] = value

    async def __aenter__(self) -> BackendCpu:
        # Its own connection to the admin database, so it is not one of the measured backends.
        self._connection = await asyncpg.connect(PG_ADMIN_DSN)
        await self._sample(self._connection)
        self.start = dict(self.latest)

        async def loop() -> None:
            while True:
                await asyncio.sleep(self.interval)
                await self._sample(self._connection)

        self._task = asyncio.create_task(loop())
        return self

    def seconds(self) -> float:
        return sum(value - self.start.get(pid, 0.0) for pid, value in self.latest.items())

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._sample(self._connection)
        await self._connection.close()


def redis_cpu_seconds(url: str) -> float:
    """The Redis server's own CPU (INFO cpu): all its databases, so shared with anything else using it."""
    import redis

    info = redis.Redis.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])
