"""Router benchmark: fan-out throughput and latency, idle-session memory, against Crossbar.io.

    python -m bench.router            # full run (1,000 subscribers, 1,000 topics, 5,000 idle sessions)
    python -m bench.router --quick    # a smaller run to check the setup

Both brokers run as their own processes on this machine and are driven by the
same load generator (this process). The generator speaks WebSocket with raw
frames on asyncio protocols (no per-message library overhead), so the
brokers, not the clients, are what is measured.

- handin: `handin router`, real ticket authentication against PostgreSQL and
  Redis; events enter as Redis PUBLISH on the topic's channel (what
  core.events does after commit); latency = Redis publish → receipt.
- Crossbar.io: installed in its own venv (.tools/crossbar; it conflicts with
  FastAPI's dependencies), realm `handin`, static ticket auth, a role allowed to
  subscribe/publish everywhere; events enter as WAMP PUBLISH from a publisher
  session; latency = publish → receipt.

Each event carries its send time (time.time()) in data.t; every subscriber
records receipt - t. Throughput = deliveries / (last receipt - first publish)
for a burst published as fast as the generator can.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

import uvloop
from redis.asyncio import Redis
from sqlalchemy import insert

from bench.common import (
    BENCH_REDIS_URL,
    SECRET,
    bench_database,
    free_port,
    percentile,
    source_tree,
    tree_cpu_seconds,
)
from core import keys
from core.auth import mint_ws_ticket
from core.clock import utcnow
from core.db import make_engine, make_sessionmaker, transaction
from core.models import Assignment, Course, Enrolment, User, WebSession

ROOT = Path(__file__).resolve().parents[1]
CROSSBAR = ROOT / ".tools" / "crossbar" / "bin" / "crossbar"
CROSSBAR_TICKET = "bench-ticket"


# A minimal WebSocket + WAMP client on an asyncio protocol ----------------------------------


class Recorder:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.latencies: list[float] = []
        self.last_receipt = 0.0

    def event(self, payload: bytes) -> None:
        now = time.time()
        sent = json.loads(payload)[4][0].get("data", {}).get("t")
        if sent is None:
            return  # not ours: pub/sub channels are shared by every Redis db
        self.latencies.append((now - sent) * 1000)
        self.last_receipt = now


class Wire(asyncio.Protocol):
    """One WAMP session. Frames from the server are unmasked; ours use a zero mask key."""

    def __init__(self, host: str, port: int, path: str, recorder: Recorder) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(secrets.token_bytes(16)).decode()}\r\n"
            "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: wamp.2.json\r\n\r\n"
        ).encode()
        self.recorder = recorder
        self.buffer = bytearray()
        self.upgraded = False
        self.replies: asyncio.Queue[list[Any]] = asyncio.Queue()
        self.transport: asyncio.Transport | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self.refused: tuple[int, float | None] | None = None  # HTTP status and Retry-After of a refused upgrade

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)
        self.replies.put_nowait([-1])

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.upgraded:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
            if " 101 " not in head[0]:
                headers = dict(line.lower().split(":", 1) for line in head[1:] if ":" in line)
                retry = headers.get("retry-after", "").strip()
                self.refused = (int(head[0].split()[1]), float(retry) if retry else None)
                if self.transport is not None:
                    self.transport.close()
                return
            del self.buffer[: end + 4]
            self.upgraded = True
        buffer = self.buffer
        offset = 0
        while len(buffer) - offset >= 2:
            opcode, length = buffer[offset] & 0x0F, buffer[offset + 1] & 0x7F
            header = 2
            if length == 126:
                if len(buffer) - offset < 4:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 4], "big"), 4
            elif length == 127:
                if len(buffer) - offset < 10:
                    break
                length, header = int.from_bytes(buffer[offset + 2 : offset + 10], "big"), 10
            if len(buffer) - offset < header + length:
                break
            payload = bytes(buffer[offset + header : offset + header + length])
            offset += header + length
            if opcode == 1:
                if payload.startswith(b"[36,"):
                    self.recorder.event(payload)
                else:
                    self.replies.put_nowait(json.loads(payload))
            elif opcode == 9:
                self._frame(0xA, payload)
            elif opcode == 8 and self.transport is not None:
                self.transport.close()
        del buffer[:offset]

    def _frame(self, opcode: int, payload: bytes) -> None:
        n = len(payload)
        if n < 126:
            header = bytes([0x80 | opcode, 0x80 | n])
        elif n < 65536:
            header = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
        else:
            header = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
        assert self.transport is not None
        self.transport.write(header + b"\x00\x00\x00\x00" + payload)

    def send(self, message: list[Any]) -> None:
        self._frame(0x1, json.dumps(message, separators=(",", ":")).encode())

    async def reply(self) -> list[Any]:
        return await asyncio.wait_for(self.replies.get(), 60)


class SessionRefused(Exception):
    """The broker said no: HTTP status at the upgrade or a WAMP ABORT, with its retry hint if any."""

    def __init__(self, reason: str, retry_after: float | None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _refusal(wire: Wire, reply: list[Any]) -> SessionRefused:
    if wire.refused is not None:
        return SessionRefused(f"HTTP {wire.refused[0]}", wire.refused[1])
    if reply[0] == 3:
        hint = reply[1].get("retry_after") if isinstance(reply[1], dict) else None
        return SessionRefused(str(reply[2]), float(hint) if isinstance(hint, int | float) else None)
    return SessionRefused(f"unexpected {reply[:3]}", None)


async def open_session(host: str, port: int, path: str, ticket: str, topic: str | None, recorder: Recorder) -> Wire:
    _transport, wire = await asyncio.get_running_loop().create_connection(
        lambda: Wire(host, port, path, recorder), host, port
    )
    try:
        await _join(wire, ticket, topic)
    except BaseException:
        # A refused or abandoned attempt (a time limit) must not keep its socket: a storm's retries
        # would run the generator out of file descriptors.
        if wire.transport is not None:
            wire.transport.close()
        raise
    return wire


async def _join(wire: Wire, ticket: str, topic: str | None) -> None:
    roles = {"subscriber": {}, "publisher": {}}
    wire.send([1, "handin", {"roles": roles, "authmethods": ["ticket"], "authid": "bench"}])
    challenge = await wire.reply()
    if challenge[0] != 4:
        raise _refusal(wire, challenge)
    wire.send([5, ticket, {}])
    welcome = await wire.reply()
    if welcome[0] != 2:
        raise _refusal(wire, welcome)
    if topic is not None:
        wire.send([32, 1, {}, topic])
        subscribed = await wire.reply()
        if subscribed[0] != 33:
            raise RuntimeError(f"expected SUBSCRIBED, got {subscribed}")


async def open_many(count: int, opener: Callable[[int], Awaitable[Wire]], concurrency: int = 100) -> list[Wire]:
    gate = asyncio.Semaphore(concurrency)

    async def one(index: int) -> Wire:
        async with gate:
            return await opener(index)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def close_all(wires: list[Wire]) -> None:
    for wire in wires:
        if wire.transport is not None:
            wire.transport.close()
    await asyncio.sleep(0.2)


# The two brokers ------------------------------------------------------------------------


def envelope(topic: str, seq: int) -> dict[str, Any]:
    return {"seq": seq, "topic": topic, "type": "bench", "at": "", "data": {"t": time.time()}}


@dataclass
class Broker:
    name: str
    host: str
    port: int
    path: str
    process: subprocess.Popen[bytes]
    ticket: Callable[[], str]
    # Browser i's fresh ticket and the topic its page subscribes to (opening sessions, the storm).
    browser_ticket: Callable[[int], str] = field(default=lambda _i: "")
    browser_topic: str = "fleet"
    publish: Callable[[list[str]], Awaitable[None]] = field(init=False)
    seq: int = 0

    def rss_kb(self, field_name: str = "VmRSS:") -> int:
        return sum(_rss_kb(pid, field_name) for pid in _process_tree(self.process.pid))

    def peak_rss_kb(self) -> int:
        return self.rss_kb("VmHWM:")

    def cpu_seconds(self) -> float:
        return tree_cpu_seconds(self.process.pid)


def _process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(children.get(pid, []))
    return tree


def _rss_kb(pid: int, field_name: str = "VmRSS:") -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _wait_port(port: int, process: subprocess.Popen[bytes], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                # Say something: a bare connect-and-close is logged as a failed handshake.
                probe.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                probe.settimeout(5)
                if probe.recv(64):
                    return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listening on {port} after {seconds}s")


def _stop(process: subprocess.Popen[bytes]) -> None:
    # The broker was started in a session of its own: end that group (Crossbar has worker children).
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


@dataclass
class Browsers:
    """Students with a logged-in web session each, enrolled in one course; their pages watch its assignment."""

    people: list[tuple[int, str]]  # (user id, web session id)
    topic: str


async def seed_browsers(database_url: str, count: int) -> Browsers:
    engine = make_engine(database_url)
    now = utcnow()
    async with transaction(make_sessionmaker(engine)) as db:
        course = Course(code=f"BENCH-{secrets.token_hex(3)}", title="Router bench")
        db.add(course)
        await db.flush()
        assignment = Assignment(
            course_id=course.id,
            title="A1",
            opens_at=now,
            deadline=now + timedelta(days=1),
            cutoff_at=now + timedelta(days=2),
        )
        db.add(assignment)
        users = [
            {"email": f"b{i}-{secrets.token_hex(3)}@bench.test", "name": f"B{i}", "password_hash": "x"}
            for i in range(count)
        ]
        ids = list((await db.execute(insert(User).returning(User.id), users)).scalars())
        await db.execute(insert(Enrolment), [{"user_id": u, "course_id": course.id, "role": "student"} for u in ids])
        people = [(u, secrets.token_urlsafe(16)) for u in ids]
        expires = now + timedelta(hours=6)
        await db.execute(insert(WebSession), [{"id": s, "user_id": u, "expires_at": expires} for u, s in people])
        await db.flush()
        topic = f"assignment.{assignment.id}"
    await engine.dispose()
    return Browsers(people, topic)


# Fan-out opens thousands of sessions for one service user, slowly on a loaded machine; opening
# sessions and the storm run on the shipped defaults.
FAN_OUT_ENV = {
    "HANDIN_WS_TICKET_TTL_SECONDS": "600",
    "HANDIN_ROUTER__HANDSHAKE_TIMEOUT_SECONDS": "120",
    "HANDIN_ROUTER__MAX_SESSIONS_PER_USER": "1000000",
}


@asynccontextmanager
async def handin_router(
    database_url: str,
    browsers: Browsers | None = None,
    source: Path = ROOT,
    cpu: str | None = None,
    name: str = "handin",
    extra_env: dict[str, str] | None = None,
) -> AsyncIterator[Broker]:
    engine = make_engine(database_url)
    async with transaction(make_sessionmaker(engine)) as db:
        user = User(email=f"bench-{secrets.token_hex(4)}@bench.test", name="bench", password_hash="x", is_service=True)
        db.add(user)
        await db.flush()
        sid = secrets.token_urlsafe(16)
        db.add(WebSession(id=sid, user_id=user.id, expires_at=utcnow() + timedelta(hours=2)))
        user_id = user.id
    await engine.dispose()
    port = free_port()
    env = {
        **os.environ,
        "HANDIN_DATABASE_URL": database_url,
        "HANDIN_REDIS_URL": BENCH_REDIS_URL,
        "HANDIN_SECRET_KEY": SECRET,
        "PYTHONPATH": str(source),
        **(extra_env or {}),
    }
    command = [sys.executable, "-m", "core.cli", "router", "--host", "127.0.0.1", "--port", str(port)]
    if cpu is not None:
        command = ["taskset", "-c", cpu, *command]
    process = subprocess.Popen(  # noqa: ASYNC220
        command, env=env, cwd=source, start_new_session=True, stdout=subprocess.DEVNULL
    )
    redis = Redis.from_url(BENCH_REDIS_URL)
    try:
        await asyncio.to_thread(_wait_port, port, process, 60)
        broker = Broker(name, "127.0.0.1", port, "/ws", process, lambda: mint_ws_ticket(user_id, sid, SECRET, 600))
        if browsers is not None:
            people = browsers.people
            broker.browser_ticket = lambda i: mint_ws_ticket(*people[i % len(people)], SECRET, 600)
            broker.browser_topic = browsers.topic

        async def publish(topics: list[str]) -> None:
            async with redis.pipeline(transaction=False) as pipe:
                for topic in topics:
                    broker.seq += 1
                    pipe.publish(keys.events_channel(topic), json.dumps(envelope(topic, broker.seq)))
                await pipe.execute()

        broker.publish = publish
        yield broker
    finally:
        await redis.aclose()
        _stop(process)


def crossbar_config(port: int) -> dict[str, Any]:
    permission = {
        "uri": "",
        "match": "prefix",
        "cache": True,
        "allow": {"call": False, "register": False, "publish": True, "subscribe": True},
        "disclose": {"caller": False, "publisher": False},
    }
    return {
        "version": 2,
        "controller": {},
        "workers": [
            {
                "type": "router",
                "realms": [{"name": "handin", "roles": [{"name": "service", "permissions": [permission]}]}],
                "transports": [
                    {
                        "type": "websocket",
                        "endpoint": {"type": "tcp", "port": port, "interface": "127.0.0.1", "backlog": 4096},
                        "serializers": ["json", "msgpack"],
                        "auth": {
                            "ticket": {
                                "type": "static",
                                "principals": {"bench": {"ticket": CROSSBAR_TICKET, "role": "service"}},
                            }
                        },
                    }
                ],
            }
        ],
    }


@asynccontextmanager
async def crossbar_router(workdir: Path, cpu: str | None = None) -> AsyncIterator[Broker]:
    cbdir = workdir / ".crossbar"
    cbdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (cbdir / "config.json").write_text(json.dumps(crossbar_config(port), indent=2))
    log = (workdir / "crossbar.log").open("wb")
    command = [str(CROSSBAR), "start", "--cbdir", str(cbdir), "--loglevel", "warn"]
    process = subprocess.Popen(  # noqa: ASYNC220
        ["taskset", "-c", cpu, *command] if cpu is not None else command,
        cwd=workdir,
        start_new_session=True,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.to_thread(_wait_port, port, process, 120)
        broker = Broker("crossbar", "127.0.0.1", port, "/", process, lambda: CROSSBAR_TICKET)
        broker.browser_ticket = lambda _i: CROSSBAR_TICKET
        broker.browser_topic = "assignment.1"
        publisher = await open_session(broker.host, port, "/", CROSSBAR_TICKET, None, Recorder())
        request = 0

        async def publish(topics: list[str]) -> None:
            nonlocal request
            for topic in topics:
                broker.seq += 1
                request += 1
                publisher.send([16, request, {}, topic, [envelope(topic, broker.seq)]])

        broker.publish = publish
        yield broker
    finally:
        _stop(process)
        log.close()


def topic_names(count: int) -> list[str]:
    # user.<id> topics a service principal may use; ids far from any real or test row, because
    # pub/sub channels are shared by every Redis db on the server.
    return [f"user.{900_000_000 + i}" for i in range(count)]


# Scenarios -------------------------------------------------------------------------------


@dataclass
class FanOut:
    deliveries_per_s: float
    p50_ms: float
    p99_ms: float
    delivered: int
    expected: int


async def _await_deliveries(recorder: Recorder, expected: int, idle_seconds: float = 5.0) -> None:
    last_count, last_change = -1, time.monotonic()
    while len(recorder.latencies) < expected:
        if len(recorder.latencies) != last_count:
            last_count, last_change = len(recorder.latencies), time.monotonic()
        elif time.monotonic() - last_change > idle_seconds:
            return  # nothing more is coming
        await asyncio.sleep(0.02)


async def fan_out(
    broker: Broker, subscribers: int, topics: int, burst_events: int, paced_events: int, paced_rate: float
) -> tuple[FanOut, FanOut]:
    """Subscribers spread over `topics` topics; a paced run for latency, a burst for throughput."""
    recorder = Recorder()
    names = topic_names(topics)
    wires = await open_many(
        subscribers,
        lambda i: open_session(broker.host, broker.port, broker.path, broker.ticket(), names[i % topics], recorder),
    )
    per_event = subscribers // topics
    try:
        await asyncio.sleep(1)
        # Latency: events at a steady rate the broker can keep up with.
        recorder.reset()
        start = time.perf_counter()
        for i in range(paced_events):
            delay = start + i / paced_rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await broker.publish([names[i % topics]])
        await _await_deliveries(recorder, paced_events * per_event)
        paced = _figures(recorder, paced_events * per_event, time.perf_counter() - start)
        # Throughput: a burst as fast as we can hand it over, in chunks so the loop keeps reading.
        recorder.reset()
        first = time.time()
        for chunk in range(0, burst_events, 100):
            await broker.publish([names[i % topics] for i in range(chunk, min(burst_events, chunk + 100))])
            await asyncio.sleep(0)
        await _await_deliveries(recorder, burst_events * per_event)
        burst = _figures(recorder, burst_events * per_event, recorder.last_receipt - first)
        return paced, burst
    finally:
        await close_all(wires)


def _figures(recorder: Recorder, expected: int, seconds: float) -> FanOut:
    values = recorder.latencies
    return FanOut(
        deliveries_per_s=len(values) / seconds if seconds > 0 else float("nan"),
        p50_ms=percentile(values, 0.50),
        p99_ms=percentile(values, 0.99),
        delivered=len(values),
        expected=expected,
    )


async def idle_sessions(broker: Broker, sessions: int, topics: int) -> float:
    """KB of broker RSS per connected, authenticated, subscribed idle session."""
    recorder = Recorder()
    names = topic_names(topics)
    warm = await open_session(broker.host, broker.port, broker.path, broker.ticket(), names[0], recorder)
    await asyncio.sleep(2)
    before = broker.rss_kb()
    wires = await open_many(
        sessions,
        lambda i: open_session(broker.host, broker.port, broker.path, broker.ticket(), names[i % topics], recorder),
    )
    gc.collect()
    await asyncio.sleep(3)
    after = broker.rss_kb()
    await close_all([warm, *wires])
    return (after - before) / sessions


@dataclass
class Opening:
    sessions_per_s: float
    cpu_ms_per_session: float
    failed: int


async def open_rate(broker: Broker, count: int, concurrency: int, first: int = 0) -> Opening:
    """`count` browsers open a session each (fresh ticket, ticket check, one SUBSCRIBE) and stay connected."""
    recorder = Recorder()
    failed = 0

    async def one(i: int) -> Wire | None:
        nonlocal failed
        try:
            return await open_session(
                broker.host, broker.port, broker.path, broker.browser_ticket(first + i), broker.browser_topic, recorder
            )
        except (SessionRefused, OSError, TimeoutError, RuntimeError):
            failed += 1
            return None

    cpu, start = broker.cpu_seconds(), time.perf_counter()
    wires = await open_many(count, one, concurrency)  # type: ignore[arg-type]
    elapsed, cpu = time.perf_counter() - start, broker.cpu_seconds() - cpu
    await close_all([w for w in wires if w is not None])
    opened = count - failed
    return Opening(opened / elapsed, cpu * 1000 / max(opened, 1), failed)


@dataclass
class StormResult:
    readmitted_s: float
    failed: int
    refused: int  # attempts answered "not now" (HTTP 503 or ABORT with a retry hint), then retried
    errors: int  # attempts that failed otherwise (reset, timeout), then retried
    peak_rss_mb: float
    cpu_ms_per_session: float


async def storm(broker: Broker, count: int, window: float, give_up: float = 60.0) -> StormResult:
    """A router restart seen by the new process: `count` browsers arrive at random moments within
    `window` seconds and retry as the browser client does (jittered exponential backoff, honouring a
    Retry-After or an ABORT's retry_after) until subscribed, or until `give_up` seconds have passed."""
    recorder = Recorder()
    wires: list[Wire] = []
    refused = errors = failed = 0
    start = time.perf_counter()
    last = start
    cpu = broker.cpu_seconds()

    async def browser(i: int) -> None:
        nonlocal refused, errors, failed, last
        await asyncio.sleep(random.uniform(0, window))
        delay = 0.5
        while time.perf_counter() - start < give_up:
            try:
                wire = await asyncio.wait_for(
                    open_session(
                        broker.host, broker.port, broker.path, broker.browser_ticket(i), broker.browser_topic, recorder
                    ),
                    10,
                )
            except SessionRefused as refusal:
                refused += 1
                hint = refusal.retry_after
            except (OSError, TimeoutError, RuntimeError):
                errors += 1
                hint = None
            else:
                wires.append(wire)
                last = max(last, time.perf_counter())
                return
            # wamp.js: equal jitter (half fixed, half random), the server's hint as the floor.
            wait = max(delay / 2 + random.uniform(0, delay / 2), hint or 0.0)
            delay = min(delay * 2, 30.0)
            await asyncio.sleep(wait)
        failed += 1

    await asyncio.gather(*(browser(i) for i in range(count)))
    result = StormResult(
        readmitted_s=last - start,
        failed=failed,
        refused=refused,
        errors=errors,
        peak_rss_mb=broker.peak_rss_kb() / 1024,
        cpu_ms_per_session=(broker.cpu_seconds() - cpu) * 1000 / max(len(wires), 1),
    )
    await close_all(wires)
    return result


# Running it --------------------------------------------------------------------------------


@dataclass
class Results:
    name: str = ""
    fan: dict[str, tuple[FanOut, FanOut]] = field(default_factory=dict)
    idle_kb: float = float("nan")
    cold: Opening | None = None  # first session of each browser since the router started
    warm: Opening | None = None  # the same browsers again (their next page view)
    storm: StormResult | None = None


async def measure_sessions(broker_factory: Callable[[], Any], args: argparse.Namespace) -> Results:
    results = Results()
    async with broker_factory() as broker:
        results.name = broker.name
        print(f"[{broker.name}] opening {args.sessions} sessions, twice", flush=True)
        results.cold = await open_rate(broker, args.sessions, args.concurrency)
        results.warm = await open_rate(broker, args.sessions, args.concurrency)
    async with broker_factory() as broker:
        print(f"[{broker.name}] storm: {args.storm} browsers within {args.storm_window:g} s", flush=True)
        results.storm = await storm(broker, args.storm, args.storm_window)
    return results


async def measure(broker_factory: Callable[[], Any], args: argparse.Namespace) -> Results:
    results = Results()
    async with broker_factory() as broker:
        print(f"[{broker.name}] 1 topic x {args.subscribers} subscribers", flush=True)
        results.fan["1xN"] = await fan_out(broker, args.subscribers, 1, args.burst_one, args.paced_one, args.rate_one)
        print(f"[{broker.name}] {args.topics} topics x 1 subscriber", flush=True)
        results.fan["Nx1"] = await fan_out(
            broker, args.topics, args.topics, args.burst_many, args.paced_many, args.rate_many
        )
    # A fresh process for memory, so the fan-out runs' heap does not count.
    async with broker_factory() as broker:
        print(f"[{broker.name}] {args.idle} idle sessions", flush=True)
        results.idle_kb = await idle_sessions(broker, args.idle, args.topics)
    return results


def report(args: argparse.Namespace, ours: Results, theirs: Results | None) -> str:
    lines = [
        "| scenario | metric | handin | Crossbar.io | handin / Crossbar |",
        "|---|---|---|---|---|",
    ]
    labels = {"1xN": f"1 topic x {args.subscribers} subscribers", "Nx1": f"{args.topics} topics x 1 subscriber"}

    def ratio(a: float, b: float | None) -> str:
        return f"{a / b:.2f}x" if b else "—"

    def cell(value: float | None, unit: str) -> str:
        return "—" if value is None else f"{value:,.1f} {unit}"

    for key, label in labels.items():
        paced, burst = ours.fan[key]
        t_paced, t_burst = theirs.fan[key] if theirs else (None, None)
        lines.append(
            f"| {label} | delivered events/s (burst) | {cell(burst.deliveries_per_s, '/s')} | "
            f"{cell(t_burst.deliveries_per_s if t_burst else None, '/s')} | "
            f"{ratio(burst.deliveries_per_s, t_burst.deliveries_per_s if t_burst else None)} |"
        )
        lines.append(
            f"| {label} | delivered / expected (burst) | {burst.delivered}/{burst.expected} | "
            f"{f'{t_burst.delivered}/{t_burst.expected}' if t_burst else '—'} | |"
        )
        for name in ("p50_ms", "p99_ms"):
            mine = getattr(paced, name)
            other = getattr(t_paced, name) if t_paced else None
            rate = args.rate_one if key == "1xN" else args.rate_many
            lines.append(
                f"| {label} | latency {name[:3]} (paced, {rate:g} events/s) | {cell(mine, 'ms')} | "
                f"{cell(other, 'ms')} | {ratio(mine, other)} |"
            )
    other_idle = theirs.idle_kb if theirs else None
    lines.append(
        f"| {args.idle} idle sessions | RSS per authenticated subscribed session | {cell(ours.idle_kb, 'KB')} | "
        f"{cell(other_idle, 'KB')} | {ratio(ours.idle_kb, other_idle)} |"
    )
    return "\n".join(lines)


def report_sessions(args: argparse.Namespace, rows: list[Results]) -> str:
    lines = [
        f"Opening sessions ({args.sessions} browsers, {args.concurrency} at a time, ticket + 1 SUBSCRIBE each) and "
        f"the storm ({args.storm} browsers arriving within {args.storm_window:g} s at a fresh router process):",
        "",
        "| router | sessions/s (first page view) | CPU/session | sessions/s (next page view) | CPU/session "
        "| storm: all subscribed after | failed | refused, retried | errors, retried | peak RSS | storm CPU/session |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        assert row.cold and row.warm and row.storm
        c, w, st = row.cold, row.warm, row.storm
        failed = f" ({c.failed + w.failed} failed)" if c.failed + w.failed else ""
        lines.append(
            f"| {row.name}{failed} | {c.sessions_per_s:,.0f}/s | {c.cpu_ms_per_session:.2f} ms "
            f"| {w.sessions_per_s:,.0f}/s | {w.cpu_ms_per_session:.2f} ms | {st.readmitted_s:.1f} s | {st.failed} "
            f"| {st.refused} | {st.errors} | {st.peak_rss_mb:,.0f} MB | {st.cpu_ms_per_session:.2f} ms |"
        )
    return "\n".join(lines)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes, to check the setup")
    parser.add_argument("--no-crossbar", action="store_true")
    parser.add_argument("--only", choices=["all", "sessions", "fanout"], default="all")
    parser.add_argument("--no-pin", action="store_true", help="don't pin the router to CPU 0 and the load to CPU 1")
    parser.add_argument("--baseline-ref", help="also measure opening sessions with the router of this git commit")
    parser.add_argument("--sessions", type=int, default=2000, help="sessions opened for the sessions/s figure")
    parser.add_argument("--concurrency", type=int, default=100, help="handshakes in flight while opening")
    parser.add_argument("--storm", type=int, default=10_000, help="browsers reconnecting in the storm")
    parser.add_argument("--storm-window", type=float, default=5.0)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--topics", type=int, default=1000)
    parser.add_argument("--idle", type=int, default=5000)
    parser.add_argument("--burst-one", type=int, default=200, help="events in the 1-topic burst")
    parser.add_argument("--paced-one", type=int, default=50)
    parser.add_argument("--rate-one", type=float, default=5.0, help="events/s in the paced 1-topic run")
    parser.add_argument("--burst-many", type=int, default=10_000)
    parser.add_argument("--paced-many", type=int, default=3000)
    parser.add_argument("--rate-many", type=float, default=1000.0)
    args = parser.parse_args(argv)
    if args.quick:
        args.subscribers, args.topics, args.idle = 100, 100, 300
        args.burst_one, args.paced_one, args.burst_many, args.paced_many = 50, 20, 1000, 300
        args.sessions, args.storm = 300, 1000
    return args


@contextmanager
def workdir() -> Iterator[Path]:
    path = ROOT / "bench" / "results" / f"router-{secrets.token_hex(3)}"
    path.mkdir(parents=True, exist_ok=True)
    yield path


async def main_async(args: argparse.Namespace) -> int:
    cpu = None if args.no_pin else "0"
    if cpu is not None:
        os.sched_setaffinity(0, {1})  # the load generator on the other core
    sessions, fanout = args.only in ("all", "sessions"), args.only in ("all", "fanout")
    rows: list[Results] = []
    ours = theirs = None
    async with bench_database() as database_url:
        browsers = await seed_browsers(database_url, max(args.sessions, args.storm))
        if sessions and args.baseline_ref:
            with source_tree(args.baseline_ref) as source:
                name = f"handin @ {args.baseline_ref}"
                rows.append(
                    await measure_sessions(lambda: handin_router(database_url, browsers, source, cpu, name), args)
                )
        if sessions:
            rows.append(await measure_sessions(lambda: handin_router(database_url, browsers, cpu=cpu), args))
        if fanout:
            ours = await measure(lambda: handin_router(database_url, cpu=cpu, extra_env=FAN_OUT_ENV), args)
    if not args.no_crossbar:
        if not CROSSBAR.exists():
            print(
                f"Crossbar.io not found at {CROSSBAR}: python3 -m venv .tools/crossbar && "
                ".tools/crossbar/bin/pip install crossbar",
                file=sys.stderr,
            )
        else:
            with workdir() as path:
                if sessions:
                    rows.append(await measure_sessions(lambda: crossbar_router(path, cpu), args))
                if fanout:
                    theirs = await measure(lambda: crossbar_router(path, cpu), args)
    print()
    if rows:
        print(report_sessions(args, rows))
        print()
    if ours is not None:
        print(report(args, ours, theirs))
    return 0


def main(argv: list[str] | None = None) -> int:
    # The load generator on uvloop too, so that on its one core it out-runs the routers it drives.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main_async(parse(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    raise SystemExit(main())
