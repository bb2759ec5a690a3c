"""Pipeline cost: CPU per submission for each component, and upload-to-complete latency.

Offers 64 KB text uploads open-loop at a fixed rate (upload i is due at
t0 + i/rate whatever happened before) to a real api process, with one real
worker process per task (`handin worker <task>`), a clamd of the bench's own,
the admin webhook posted to a local stand-in, receipts to the outbox, and
PostgreSQL and Redis. Two phases in the same run, same rate:

- **no-op**: every worker runs a handler that returns at once, so what its
  process spends per submission is the orchestration of a step alone (start,
  finish, events, publish, queue the next);
- **real**: the real handlers.

For each phase it prints CPU milliseconds per submission of every worker,
the api, the PostgreSQL backends of the bench's own database, the Redis
server and clamd (from /proc, sampled before and after; each process's idle
CPU over the same span is printed too), and upload-to-complete p50/p95/p99
counted from when each upload was due. Then the similarity look-up: one
64 KB document looked up against an assignment with 100 and with 10,000
earlier submissions in a never-analysed table of its own, and with 100
beside another assignment's 10,000 in one table; the three take turns, 100
look-ups each; median wall time and mean PostgreSQL CPU per look-up, and
the ratios.

    python -m bench.pipeline [--rate 10] [--seconds 60] [--noop-seconds 20] [--size-kb 64]
                             [--baseline-ref REF [--rounds 2]]

With ``--baseline-ref`` each phase runs again with the api and workers of
commit REF; ``--rounds N`` runs each such pair N times, the order swapped
every round (this checkout first, then REF first, ...), and reports each
component's mean over the rounds beside every round's totals: this machine
drifts by 10-20 % within minutes, and a fixed order charges the drift to
whichever side runs second.

Writes the measured per-step service times to bench/results/pipeline.json,
which bench/autoscale.py uses when present.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import httpx
import redis as sync_redis

from api.middleware.csrf import csrf_token
from bench.common import (
    BENCH_REDIS_URL,
    PG_ADMIN_DSN,
    SECRET,
    AdminStandIn,
    BackendCpu,
    bench_database,
    bench_env,
    free_port,
    handin,
    percentile,
    process_cpu_seconds,
    redis_cpu_seconds,
    running,
    seed_students,
    source_env,
    source_tree,
    start_clamd,
    tree_cpu_seconds,
)
from core.keys import TASKS
from core.pipeline import STEP_NAMES
from core.settings import Settings

CSRF_NONCE = "bench-nonce"
RESULTS = Path(__file__).parent / "results" / "pipeline.json"
IDLE_SECONDS = 5.0
TARGET_CPU_MS = 80.0
TARGET_ORCHESTRATION_MS = 3.0
LOOKUP_WARM_UP = 3  # look-ups of each size before the timed ones
LOOKUP_CPU_READABLE_MS = 200.0  # 20 of PostgreSQL's 10 ms clock ticks: a sum read to within 5 %


# A student's vocabulary: a few thousand words, the common ones far more often (Zipf-like), so
# ordinary phrases recur between essays as they do in real coursework.
VOCABULARY = [
    "".join("etaoinshrdlcumwfgypbvkjxqz"[(word * 7 + place * 13 + place * place) % 26] for place in range(3 + word % 8))
    for word in range(6000)
]
WORD_WEIGHTS = [1.0 / (rank + 1) for rank in range(len(VOCABULARY))]
SHARED_OPENING = "the quick brown fox jumps over the lazy dog while the student copies a paragraph. " * 8
# Every COPIER_EVERY-th essay copies a passage of the one before it, as a plagiarised essay would.
COPIER_EVERY = 10
COPIED_CHARS = 4096


def upload_body(index: int, size: int) -> bytes:
    """An essay of its own (so similarity has real work), sharing an opening paragraph with all.

    Words drawn per essay from one vocabulary, in lines of about 70 characters and paragraphs,
    as a student's text file has; one essay in ten copies a passage of the essay before it.
    """
    body = _own_text(index, size)
    if index % COPIER_EVERY == COPIER_EVERY - 1 and index > 0:
        source = _own_text(index - 1, size)
        middle = len(body) // 2
        body = body[:middle] + source[middle : middle + COPIED_CHARS] + body[middle + COPIED_CHARS :]
    return (SHARED_OPENING + "\n\n" + body).encode()[:size]


def _own_text(index: int, size: int) -> str:
    import random

    words = random.Random(index).choices(VOCABULARY, WORD_WEIGHTS, k=size // 5)
    lines = [" ".join(words[start : start + 11]) for start in range(0, len(words), 11)]
    return "\n\n".join("\n".join(lines[start : start + 6]) for start in range(0, len(lines), 6))


# --- the no-op worker ---------------------------------------------------------------------------


def noop_worker(task: str) -> None:
    """`python -m bench.pipeline --noop-worker <task>`: the task's worker with a handler that does nothing."""
    from core.logs import configure_logging
    from workers.base import step_worker_settings
    from workers.run import serve
    from workers.runner import Outcome, StepContext

    async def handle(ctx: StepContext) -> Outcome:
        return Outcome("succeeded", {"noop": True})

    configure_logging()
    serve(task, step_worker_settings(task, handle))


def worker_command(task: str, noop: bool) -> list[str]:
    if noop:
        return [sys.executable, "-m", "bench.pipeline", "--noop-worker", task]
    return handin("worker", task)


# --- measuring ----------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    offered: int = 0
    accepted: int = 0
    elapsed_s: float = 0.0
    cpu_ms: dict[str, float] = field(default_factory=dict)  # per submission
    idle_ms_per_s: dict[str, float] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    step_run_ms: dict[str, float] = field(default_factory=dict)
    # The planted copies (every COPIER_EVERY-th essay): how many named their source, and their scores.
    copies_planted: int = 0
    copies_found: int = 0
    copy_scores: list[float] = field(default_factory=list)


class Upload(NamedTuple):
    due: float  # wall-clock time the upload was due
    index: int  # which essay (upload_body) it carried


class Components:
    """The processes of one phase, by component name, and how to read their CPU."""

    def __init__(self, pids: dict[str, int], clamd_pid: int, database: str) -> None:
        self.pids = pids
        self.clamd_pid = clamd_pid
        self.database = database

    def sample(self) -> dict[str, float]:
        figures = {name: tree_cpu_seconds(pid) for name, pid in self.pids.items()}
        figures["clamd"] = tree_cpu_seconds(self.clamd_pid)
        figures["redis"] = redis_cpu_seconds(BENCH_REDIS_URL)
        figures["bench (load, stand-in)"] = process_cpu_seconds(os.getpid()) or 0.0
        return figures

    async def measure(self, seconds: float | None, work: Any = None) -> tuple[dict[str, float], float]:
        """CPU seconds per component while `work` runs (or for `seconds`), and the wall time."""
        async with BackendCpu(self.database) as backends:
            before = self.sample()
            start = time.perf_counter()
            if work is not None:
                await work
            else:
                await asyncio.sleep(seconds or 0)
            after = self.sample()
        used = {name: after[name] - before[name] for name in before}
        used["postgresql (bench db)"] = backends.seconds()
        return used, time.perf_counter() - start


async def offer(base_url: str, path: str, cookies: list[str], rate: float, count: int, size: int) -> dict[int, Upload]:
    """Open-loop uploads; returns submission id → when its upload was due and which essay it was."""
    due: dict[int, Upload] = {}
    refusals: list[str] = []
    limits = httpx.Limits(max_connections=500, max_keepalive_connections=100)
    headers = {"Origin": base_url}  # the api's forged-request check
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits, headers=headers) as http:
        start_wall, start = time.time(), time.perf_counter()

        async def one(index: int) -> None:
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            session = cookies[index % len(cookies)]
            try:
                answer = await http.post(
                    path,
                    files={"file": (f"essay-{index}.txt", upload_body(index, size), "text/plain")},
                    # The api's forged-request check: a page would send the token it rendered.
                    headers={"X-CSRF-Token": csrf_token(SECRET, CSRF_NONCE, session)},
                    cookies={"handin_session": session, "handin_csrf": CSRF_NONCE},
                )
            except httpx.HTTPError as error:
                refusals.append(f"{type(error).__name__} {error}")
                return
            if answer.status_code == 202:
                due[int(answer.json()["id"])] = Upload(start_wall + index / rate, index)
            elif not refusals:
                refusals.append(f"{answer.status_code} {answer.text[:200]}")

        await asyncio.gather(*(one(i) for i in range(count)))
    if refusals:
        print(f"{count - len(due)} of {count} uploads refused; the first: {refusals[0]}", file=sys.stderr)
    return due


async def wait_done(database_url: str, ids: list[int], limit_s: float) -> None:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            open_count = await connection.fetchval(
                "SELECT count(*) FROM submissions WHERE id = ANY($1::bigint[]) AND completed_at IS NULL", ids
            )
            if not open_count:
                return
            await asyncio.sleep(0.25)
        stuck = await connection.fetch(
            "SELECT step, state, count(*) AS n, max(error) AS error FROM submission_steps"
            " WHERE submission_id = ANY($1::bigint[]) AND state NOT IN ('succeeded', 'skipped')"
            " GROUP BY step, state",
            ids,
        )
        detail = "; ".join(f"{r['step']} {r['state']} x{r['n']} {r['error'] or ''}" for r in stuck)
        raise TimeoutError(f"{open_count} submissions still open after {limit_s:g} s: {detail}")
    finally:
        await connection.close()


async def outcomes(database_url: str, due: dict[int, Upload], phase: Phase) -> None:
    connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
    try:
        ids = list(due)
        for row in await connection.fetch(
            "SELECT id, status, completed_at FROM submissions WHERE id = ANY($1::bigint[])", ids
        ):
            phase.statuses[row["status"]] = phase.statuses.get(row["status"], 0) + 1
            completed: datetime = row["completed_at"]
            if completed.tzinfo is None:
                from datetime import UTC

                completed = completed.replace(tzinfo=UTC)
            phase.latency_ms.append((completed.timestamp() - due[row["id"]].due) * 1000)
        for row in await connection.fetch(
            "SELECT step, percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM finished_at - started_at))"
            " AS p50 FROM submission_steps WHERE submission_id = ANY($1::bigint[]) AND state = 'succeeded'"
            " GROUP BY step",
            ids,
        ):
            phase.step_run_ms[row["step"]] = float(row["p50"]) * 1000
        results = {
            row["submission_id"]: json.loads(row["result"])
            for row in await connection.fetch(
                "SELECT submission_id, result FROM submission_steps WHERE submission_id = ANY($1::bigint[])"
                " AND step = 'similarity' AND state = 'succeeded'",
                ids,
            )
        }
        detection(due, results, phase)
    finally:
        await connection.close()


def detection(due: dict[int, Upload], results: dict[int, dict[str, Any]], phase: Phase) -> None:
    """Was each planted copy reported, on the copy naming its source or on the source naming the copy
    (whichever was checked second sees the other)? No-op handlers report no matches."""
    by_index = {upload.index: submission_id for submission_id, upload in due.items()}
    for copy, upload in due.items():
        source = by_index.get(upload.index - 1)
        if upload.index % COPIER_EVERY != COPIER_EVERY - 1 or source is None:
            continue
        if any("matches" not in results.get(checked, {}) for checked in (copy, source)):
            return
        phase.copies_planted += 1
        named = [
            match
            for checked, other in ((copy, source), (source, copy))
            for match in results[checked]["matches"]
            if match["submission_id"] == other
        ]
        if named:
            phase.copies_found += 1
            phase.copy_scores.append(named[0]["score"])


@contextmanager
def processes(env: dict[str, str], noop: bool, api_port: int, source: Path | None = None) -> Iterator[dict[str, int]]:
    """The api and one worker per task; from the code in `source` (a baseline's tree) if given."""
    cwd = source
    if source is not None:
        env = source_env(env, source)
    logs = Path(env["HANDIN_BENCH_LOG_DIR"]) if env.get("HANDIN_BENCH_LOG_DIR") else None
    with ExitStack() as stack:
        pids: dict[str, int] = {}
        api = stack.enter_context(
            running(
                handin("api", "--port", str(api_port)),
                env,
                f"http://127.0.0.1:{api_port}/healthz",
                log=logs / "api.log" if logs else None,
                cwd=cwd,
            )
        )
        pids["api"] = api.pid
        for task in TASKS:
            log = logs / f"{task}.log" if logs else None
            pids[f"worker {task}"] = stack.enter_context(running(worker_command(task, noop), env, log=log, cwd=cwd)).pid
        yield pids


async def run_phase(
    name: str,
    noop: bool,
    args: argparse.Namespace,
    database_url: str,
    root: Path,
    clamd: Any,
    env: dict[str, str],
    source: Path | None = None,
) -> Phase:
    phase = Phase(name)
    count = int(args.rate * (args.noop_seconds if noop else args.seconds))
    # One student per upload: intake refuses a student's concurrent uploads past a few attempt-number races.
    seeded = await seed_students(database_url, students=count)
    port = free_port()
    path = f"/api/assignments/{seeded.assignment_id}/submissions"
    env = {**env, "HANDIN_PUBLIC_URL": f"http://127.0.0.1:{port}"}
    with processes(env, noop, port, source) as pids:
        components = Components(pids, clamd.pid, database_url.rsplit("/", 1)[1])
        # Warm-up: imports, connection pools, first queries; not counted.
        warm = await offer(f"http://127.0.0.1:{port}", path, seeded.cookies, 5, 6, args.size_kb * 1024)
        await wait_done(database_url, list(warm), 60)
        idle, idle_s = await components.measure(IDLE_SECONDS)
        phase.idle_ms_per_s = {key: value * 1000 / idle_s for key, value in idle.items()}
        due: dict[int, Upload] = {}

        async def load() -> None:
            due.update(
                await offer(f"http://127.0.0.1:{port}", path, seeded.cookies, args.rate, count, args.size_kb * 1024)
            )
            await wait_done(database_url, list(due), 900)

        used, phase.elapsed_s = await components.measure(None, load())
    phase.offered, phase.accepted = count, len(due)
    phase.cpu_ms = {key: value * 1000 / max(1, len(due)) for key, value in used.items()}
    await outcomes(database_url, due, phase)
    return phase


# --- the similarity look-up ---------------------------------------------------------------------


class LookupCost(NamedTuple):
    """One size's look-ups: median wall ms, and the backend's CPU ms, per look-up and in all."""

    wall_ms: float
    cpu_ms: float
    cpu_total_ms: float


@dataclass
class LookupProbe:
    """An assignment's fingerprint index, seeded, and the look-up to time against it."""

    engine: Any
    sessions: Any
    backend_pid: int
    assignment_id: int
    hashes: list[int]
    exclude_user_id: int
    max_holders: int

    async def timed(self) -> tuple[float, float]:
        """Wall ms and the backend's CPU ms of one look-up."""
        from core.similarity import index

        before_cpu, before = process_cpu_seconds(self.backend_pid) or 0.0, time.perf_counter()
        await index.lookup(
            self.sessions,
            self.assignment_id,
            self.hashes,
            submission_id=0,  # the probe: no submission, none of its rows in the index
            exclude_user_id=self.exclude_user_id,
            max_holders=self.max_holders,
        )
        wall = (time.perf_counter() - before) * 1000
        return wall, ((process_cpu_seconds(self.backend_pid) or 0.0) - before_cpu) * 1000


async def seeded_probe(database_url: str, earlier: int, prints_each: int, beside: int = 0) -> LookupProbe:
    """A 64 KB essay's look-up against `earlier` submissions to its assignment; with `beside`,
    in a table that first got `beside` submissions to another assignment (a busy installation).

    The fingerprints are written server-side in bulk into a table that is
    never analysed (autovacuum off on it), the state a new assignment on a busy
    installation starts in.
    """
    from sqlalchemy import text

    from core.db import make_engine, make_sessionmaker
    from core.similarity.winnowing import fingerprint

    seeded = await seed_students(database_url, students=2)
    engine = make_engine(database_url, pool_size=1, max_overflow=0)
    sessions = make_sessionmaker(engine)
    shipped = Settings().similarity
    prints = fingerprint(upload_body(0, 64 * 1024).decode(), shipped.k, shipped.window)
    async with sessions() as session, session.begin():
        await session.execute(text("ALTER TABLE fingerprints SET (autovacuum_enabled = false)"))
        user_ids = list(await session.scalars(text("SELECT id FROM users ORDER BY id DESC LIMIT 2")))
        if beside:
            other = await _another_assignment(session, seeded.assignment_id)
            await _seed_earlier(session, other, user_ids[0], beside, prints_each)
        await _seed_earlier(session, seeded.assignment_id, user_ids[0], earlier, prints_each)
        # The question's text, in every earlier essay: 2 % of the probe's hashes.
        question, copied = prints[: max(1, len(prints) // 50)], prints[len(prints) // 2 : len(prints) // 2 + 300]
        await session.execute(
            text(
                "INSERT INTO fingerprints (assignment_id, hash, submission_id, ordinal, position)"
                " SELECT :a, q.h, s.id, :p + q.n, 0"
                " FROM submissions s, unnest(CAST(:h AS bigint[])) WITH ORDINALITY AS q(h, n)"
                " WHERE s.assignment_id = :a"
            ),
            {"a": seeded.assignment_id, "h": [p.hash for p in question], "p": prints_each},
        )
        # A passage of ~5 % copied from one earlier essay.
        await session.execute(
            text(
                "INSERT INTO fingerprints (assignment_id, hash, submission_id, ordinal, position)"
                " SELECT :a, c.h, (SELECT min(id) FROM submissions WHERE assignment_id = :a), :after + c.n, 0"
                " FROM unnest(CAST(:h AS bigint[])) WITH ORDINALITY AS c(h, n)"
            ),
            {"a": seeded.assignment_id, "h": [p.hash for p in copied], "after": prints_each + len(question)},
        )
    # The engine's one pooled connection serves every look-up: its backend is the one measured.
    async with sessions() as session:
        pid = int(await session.scalar(text("SELECT pg_backend_pid()")) or 0)
    hashes = [p.hash for p in prints]
    return LookupProbe(engine, sessions, pid, seeded.assignment_id, hashes, user_ids[1], shipped.boilerplate_holders)


async def _another_assignment(session: Any, assignment_id: int) -> int:
    """A second assignment of the same course, open as the first is."""
    from core.models import Assignment

    first = await session.get(Assignment, assignment_id)
    columns = ("course_id", "opens_at", "deadline", "cutoff_at", "max_bytes", "accepted_types", "max_attempts")
    other = Assignment(title="Beside", **{name: getattr(first, name) for name in columns})
    session.add(other)
    await session.flush()
    return int(other.id)


async def _seed_earlier(session: Any, assignment_id: int, user_id: int, earlier: int, prints_each: int) -> None:
    """`earlier` submissions to the assignment, each with `prints_each` random hashes of its own."""
    from sqlalchemy import text

    await session.execute(
        text(
            "INSERT INTO submissions (assignment_id, user_id, attempt, late, sha256, size, original_filename,"
            " content_type, kind, storage_key, status, received_at)"
            " SELECT :a, :u, g, false, '', 1, 'x.txt', 'text/plain', 'text', 'k' || g, 'complete', now()"
            " FROM generate_series(1, :n) g"
        ),
        {"a": assignment_id, "u": user_id, "n": earlier},
    )
    await session.execute(
        text(
            "INSERT INTO fingerprints (assignment_id, hash, submission_id, ordinal, position)"
            " SELECT :a, (random() * 9e18)::bigint, s.id, g, g FROM submissions s, generate_series(1, :p) g"
            " WHERE s.assignment_id = :a"
        ),
        {"a": assignment_id, "p": prints_each},
    )


def in_turns(items: list[Any], rounds: int) -> list[Any]:
    """``items`` once a round for ``rounds`` rounds, the order reversed every other round, so the
    machine's drift is shared between them instead of charged to whichever runs last."""
    return [item for n in range(rounds) for item in (items if n % 2 == 0 else items[::-1])]


async def measure_lookup(args: argparse.Namespace) -> dict[str, LookupCost]:
    """The look-up at 100 earlier submissions and at ``args.lookup_earlier``, each in a table of its
    own, and at 100 again beside another assignment's ``args.lookup_earlier`` in one table; interleaved."""
    many = args.lookup_earlier
    layouts = {"100": (100, 0), str(many): (many, 0), f"100 beside {many}": (100, many)}
    async with AsyncExitStack() as stack:
        probes: dict[str, LookupProbe] = {}
        for name, (earlier, beside) in layouts.items():
            # A database of its own each, so every table starts never analysed.
            database_url = await stack.enter_async_context(bench_database())
            probes[name] = await seeded_probe(database_url, earlier, args.lookup_prints, beside)
            stack.push_async_callback(probes[name].engine.dispose)
        # The seeding's pages written out now, not by the checkpointer in the middle of the timings.
        admin = await asyncpg.connect(PG_ADMIN_DSN)
        await admin.execute("CHECKPOINT")
        await admin.close()
        names = list(probes)
        # The first look-ups set the hint bits of the freshly written rows they read.
        for name in in_turns(names, LOOKUP_WARM_UP):
            await probes[name].timed()
        walls: dict[str, list[float]] = {name: [] for name in names}
        cpu_ms = dict.fromkeys(names, 0.0)
        for name in in_turns(names, args.lookup_repeats):
            wall, cpu = await probes[name].timed()
            walls[name].append(wall)
            cpu_ms[name] += cpu
    repeats = args.lookup_repeats
    return {name: LookupCost(statistics.median(walls[name]), cpu_ms[name] / repeats, cpu_ms[name]) for name in names}


# --- the report ---------------------------------------------------------------------------------


def report(phases: list[Phase], lookup: dict[str, LookupCost], args: argparse.Namespace) -> None:
    print(
        f"\npipeline cost: {args.size_kb} KB text uploads at {args.rate:g}/s offered, one process per component, "
        f"{os.cpu_count()} cores"
    )
    names = sorted({key for phase in phases for key in phase.cpu_ms}, key=_component_order)
    by_name = {phase.name: phase for phase in phases}
    noop, real, baseline = by_name.get("no-op"), by_name.get("real"), by_name.get("baseline")
    widths = {phase.name: max(16, len(phase.name) + 9) for phase in phases}
    header = f"{'component':<26}" + "".join(f"{p.name + ' ms/sub':>{widths[p.name]}}{'idle ms/s':>11}" for p in phases)
    if noop and real:
        header += f"{'real-no-op':>12}"
    if real and baseline:
        header += f"{'real/baseline':>15}"
    print(header)
    for name in names:
        line = f"{name:<26}"
        for phase in phases:
            cpu, idle = phase.cpu_ms.get(name, float("nan")), phase.idle_ms_per_s.get(name, float("nan"))
            line += f"{cpu:{widths[phase.name]}.1f}{idle:11.1f}"
        if noop and real:
            line += f"{real.cpu_ms.get(name, 0) - noop.cpu_ms.get(name, 0):12.1f}"
        if real and baseline:
            line += f"{real.cpu_ms.get(name, 0) / max(baseline.cpu_ms.get(name, 0), 0.01):14.2f}x"
        print(line)
    for phase in phases:
        pipeline = _pipeline_total(phase)
        print(
            f"{phase.name:>6}: total, every process (api + workers + postgresql + redis + clamd) {pipeline:.1f} "
            f"ms/submission ({_pipeline_total(phase, redis=False):.1f} without redis); "
            f"{phase.accepted}/{phase.offered} accepted, {phase.accepted / phase.elapsed_s:.1f}/s through "
            f"in {phase.elapsed_s:.1f} s; statuses {phase.statuses}; upload-to-complete "
            f"p50 {percentile(phase.latency_ms, 0.5):.0f} ms  p95 {percentile(phase.latency_ms, 0.95):.0f} ms  "
            f"p99 {percentile(phase.latency_ms, 0.99):.0f} ms"
        )
        if phase.copies_planted:
            share = 100 * COPIED_CHARS / (args.size_kb * 1024)
            print(
                f"{phase.name:>6}: planted copies ({COPIED_CHARS} characters, {share:.0f} % of an essay) reported "
                f"with their source: {phase.copies_found} of {phase.copies_planted}; score for the pair "
                f"median {statistics.median(phase.copy_scores or [0]):.1f} %"
            )
    for orchestrated in (noop, by_name.get("no-op baseline")):
        if orchestrated is None:
            continue
        workers = [orchestrated.cpu_ms[f"worker {t}"] for t in TASKS]
        pg_per_step = orchestrated.cpu_ms["postgresql (bench db)"] / len(TASKS)
        print(
            f"orchestration per step ({orchestrated.name}): worker {statistics.mean(workers):.1f} ms "
            f"(max {max(workers):.1f}) + PostgreSQL {pg_per_step:.1f} ms   target <= {TARGET_ORCHESTRATION_MS:g} ms"
        )
    if real is not None:
        print(f"real: {_pipeline_total(real):.1f} ms CPU per submission   target <= {TARGET_CPU_MS:g} ms")
        if noop is not None:
            print(f"real / no-op total: {_pipeline_total(real) / _pipeline_total(noop):.2f}x")
        if baseline is not None:
            print(
                f"real / baseline ({args.baseline_ref}) total: {_pipeline_total(real):.1f} / "
                f"{_pipeline_total(baseline):.1f} ms = {_pipeline_total(real) / _pipeline_total(baseline):.2f}x"
            )
    if lookup:
        print(
            f"similarity look-up (64 KB document, never-analysed table, {args.lookup_repeats} look-ups each,"
            " interleaved), by earlier submissions to its assignment:"
        )
        for name, cost in lookup.items():
            print(f"  {name:>18} earlier  {cost.wall_ms:5.1f} ms wall  {cost.cpu_ms:5.1f} ms PostgreSQL CPU")
        many = str(args.lookup_earlier)
        for small in ("100", f"100 beside {many}"):
            print(f"  {many} / {small}: {_lookup_ratio(lookup[many], lookup[small])}   target <= 1.5x")


def _lookup_ratio(large: LookupCost, small: LookupCost) -> str:
    # PostgreSQL's CPU clock ticks in 10 ms steps: a ratio means something once each side holds many.
    readable = min(small.cpu_total_ms, large.cpu_total_ms) >= LOOKUP_CPU_READABLE_MS
    cpu = f"{large.cpu_ms / small.cpu_ms:.2f}x CPU" if readable else "CPU too little to read"
    return f"{large.wall_ms / small.wall_ms:.2f}x wall, {cpu}"


def _component_order(name: str) -> tuple[int, str]:
    if name.startswith("worker "):
        return (1, f"{STEP_NAMES.index(name[7:]):02d}" if name[7:] in STEP_NAMES else name)
    return ({"api": 0, "postgresql (bench db)": 2, "redis": 3, "clamd": 4}.get(name, 5), name)


def wanted_phases(args: argparse.Namespace) -> list[tuple[str, bool]]:
    """(phase name, no-op?) in the order to run: each pair with the baseline ``args.rounds`` times,
    this checkout first in the first round and the baseline first in the next."""
    pairs = []
    if args.noop_seconds > 0:
        pairs.append([("no-op", True)] + ([("no-op baseline", True)] if args.baseline_ref else []))
    if args.seconds > 0:
        pairs.append([("real", False)] + ([("baseline", False)] if args.baseline_ref else []))
    rounds = args.rounds if args.baseline_ref else 1
    return [phase for pair in pairs for phase in in_turns(pair, rounds)]


def merge_rounds(phases: list[Phase]) -> list[Phase]:
    """One phase per name, in the order first run: CPU figures the mean of its rounds, counts summed."""
    by_name: dict[str, list[Phase]] = {}
    for phase in phases:
        by_name.setdefault(phase.name, []).append(phase)
    return [runs[0] if len(runs) == 1 else _merged(name, runs) for name, runs in by_name.items()]


def _merged(name: str, runs: list[Phase]) -> Phase:
    def mean_of(figures: list[dict[str, float]]) -> dict[str, float]:
        return {key: statistics.mean(figure.get(key, 0.0) for figure in figures) for key in figures[0]}

    statuses: dict[str, int] = {}
    for run in runs:
        for status, count in run.statuses.items():
            statuses[status] = statuses.get(status, 0) + count
    return Phase(
        name,
        offered=sum(run.offered for run in runs),
        accepted=sum(run.accepted for run in runs),
        elapsed_s=sum(run.elapsed_s for run in runs),
        cpu_ms=mean_of([run.cpu_ms for run in runs]),
        idle_ms_per_s=mean_of([run.idle_ms_per_s for run in runs]),
        latency_ms=[ms for run in runs for ms in run.latency_ms],
        statuses=statuses,
        step_run_ms=mean_of([run.step_run_ms for run in runs]),
        copies_planted=sum(run.copies_planted for run in runs),
        copies_found=sum(run.copies_found for run in runs),
        copy_scores=[score for run in runs for score in run.copy_scores],
    )


def _pipeline_total(phase: Phase, *, redis: bool = True) -> float:
    """Everything the pipeline costs, the bench itself (load, stand-ins) left out. Redis's figure is
    its whole server's (INFO cpu): on a machine where something else uses the same Redis, read the
    total without it (``redis=False``) as well."""
    left_out = {"bench (load, stand-in)"} | (set() if redis else {"redis"})
    return sum(value for name, value in phase.cpu_ms.items() if name not in left_out)


async def main(args: argparse.Namespace) -> None:
    root = Path(tempfile.mkdtemp(prefix="handin-pipeline-"))
    sync_redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    admin = AdminStandIn()
    phases: list[Phase] = []
    lookup: dict[str, LookupCost] = {}
    clamd, clamd_port = start_clamd(root / "clamd")
    try:
        env = bench_env(
            "",
            root,
            HANDIN_SCANNER__CLAMD_HOST="127.0.0.1",
            HANDIN_SCANNER__CLAMD_PORT=str(clamd_port),
            HANDIN_ADMIN__URL=admin.url,
            HANDIN_ADMIN__SECRET="bench-admin-secret-0123456789abcdef",
        )
        for name, noop in wanted_phases(args):
            of_baseline = name.endswith("baseline")
            with source_tree(args.baseline_ref if of_baseline else None) as source:
                baseline = source if of_baseline else None
                async with bench_database(baseline) as database_url:
                    env["HANDIN_DATABASE_URL"] = database_url
                    phases.append(await run_phase(name, noop, args, database_url, root, clamd, env, baseline))
            sync_redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
        if args.lookup_earlier:
            lookup = await measure_lookup(args)
    finally:
        clamd.kill()
        admin.close()
        sync_redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
        shutil.rmtree(root, ignore_errors=True)
    if len(phases) > len(merged := merge_rounds(phases)):
        print("\nrounds, in the order run (total ms/submission, every process):")
        print("; ".join(f"{phase.name} {_pipeline_total(phase):.1f}" for phase in phases))
    phases = merged
    report(phases, lookup, args)
    real = next((p for p in phases if p.name == "real"), None)
    if real is not None:
        RESULTS.parent.mkdir(exist_ok=True)
        service = {step: round(ms / 1000, 4) for step, ms in real.step_run_ms.items()}
        RESULTS.write_text(
            json.dumps(
                {"service_seconds_p50": service, "submissions_per_second": real.accepted / real.elapsed_s}, indent=2
            )
        )


# --- the honest wait's estimates against what happened -------------------------------------------


async def check_estimates(args: argparse.Namespace) -> None:
    """`--check-estimates`: the wait endpoint's estimates against when each step really finished.

    The api and `handin autoscaler` (local backend, one worker per pool, so the
    autoscaler learns each pool's drain rate and saves it as it does in
    production); no scanner or admin system (those steps are skipped). After
    a warm-up the autoscaler has measured, uploads are offered at --rate and
    every --estimate-every-th one polls GET /api/submissions/{id}/wait as its
    page would (every 0.5 s here). The first estimate of each queued step is
    compared with that step's finished_at: median and p90 absolute error, and
    how often the finish fell inside the range the page showed.
    """
    root = Path(tempfile.mkdtemp(prefix="handin-estimates-"))
    sync_redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    count = int(args.rate * args.estimate_seconds)
    first: dict[tuple[int, str], tuple[float, float, float]] = {}  # (id, step) -> expected, low, high (epoch)
    try:
        async with bench_database() as database_url:
            seeded = await seed_students(database_url, students=count + 20)
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            one_each = {f"HANDIN_AUTOSCALER__POOLS__{task.upper()}__MAX_REPLICAS": "1" for task in TASKS}
            env = bench_env(
                database_url,
                root,
                HANDIN_PUBLIC_URL=base,
                HANDIN_AUTOSCALER__INTERVAL_SECONDS="1",
                HANDIN_AUTOSCALER__HTTP_PORT="0",
                **one_each,
            )
            with (
                running(handin("api", "--port", str(port)), env, f"{base}/healthz"),
                running(handin("autoscaler"), env),
            ):
                path = f"/api/assignments/{seeded.assignment_id}/submissions"
                warm = await offer(base, path, seeded.cookies[count:], 2, 20, args.size_kb * 1024)
                await wait_done(database_url, list(warm), 300)
                async with httpx.AsyncClient(base_url=base, timeout=60) as http:

                    async def follow(submission_id: int, cookie: str) -> None:
                        give_up = time.monotonic() + 300
                        while time.monotonic() < give_up:
                            sampled = time.time()
                            answer = await http.get(
                                f"/api/submissions/{submission_id}/wait", cookies={"handin_session": cookie}
                            )
                            if answer.status_code != 200:
                                raise RuntimeError(f"wait endpoint: {answer.status_code} {answer.text[:300]}")
                            view = answer.json()
                            for step in view["steps"]:
                                estimate = step["estimate"]
                                if estimate is not None and (submission_id, step["step"]) not in first:
                                    first[(submission_id, step["step"])] = (
                                        sampled + estimate["expected_seconds"],
                                        sampled + estimate["low_seconds"],
                                        sampled + estimate["high_seconds"],
                                    )
                            done = await http.get(
                                f"/api/submissions/{submission_id}", cookies={"handin_session": cookie}
                            )
                            if done.json()["completed_at"] is not None:
                                return
                            await asyncio.sleep(0.5)

                    followed: list[int] = []
                    started = time.perf_counter()

                    async def upload(index: int) -> None:
                        await asyncio.sleep(max(0.0, started + index / args.rate - time.perf_counter()))
                        cookie = seeded.cookies[index]
                        answer = await http.post(
                            path,
                            files={
                                "file": (f"essay-{index}.txt", upload_body(index, args.size_kb * 1024), "text/plain")
                            },
                            headers={"Origin": base, "X-CSRF-Token": csrf_token(SECRET, CSRF_NONCE, cookie)},
                            cookies={"handin_session": cookie, "handin_csrf": CSRF_NONCE},
                        )
                        if answer.status_code == 202 and index % args.estimate_every == 0:
                            followed.append(int(answer.json()["id"]))
                            await follow(followed[-1], cookie)

                    await asyncio.gather(*(upload(i) for i in range(count)))
            connection = await asyncpg.connect(database_url.replace("+asyncpg", ""))
            try:
                rows = await connection.fetch(
                    "SELECT submission_id, step, extract(epoch FROM finished_at) AS at FROM submission_steps"
                    " WHERE submission_id = ANY($1::bigint[]) AND finished_at IS NOT NULL",
                    [key[0] for key in first],
                )
            finally:
                await connection.close()
    finally:
        sync_redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
        shutil.rmtree(root, ignore_errors=True)
    finished = {(row["submission_id"], row["step"]): float(row["at"]) for row in rows}
    errors = [abs(finished[key] - guess[0]) for key, guess in first.items() if key in finished]
    inside = sum(1 for key, guess in first.items() if key in finished and guess[1] - 1 <= finished[key] <= guess[2] + 1)
    print(f"estimates checked: {len(errors)} queued steps of {len(followed)} followed submissions")
    if errors:
        print(
            f"absolute error of the expected finish: median {statistics.median(errors):.2f} s,"
            f" p90 {percentile(errors, 0.90):.2f} s, max {max(errors):.2f} s;"
            f" finished inside the shown range (±1 s): {inside}/{len(errors)}"
        )


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rate", type=float, default=10.0, help="uploads offered per second")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the real run (0: skip it)")
    parser.add_argument(
        "--baseline-ref",
        help="also run each phase (no-op, real) with the api and workers of this git commit (same load)",
    )
    parser.add_argument("--noop-seconds", type=float, default=20.0, help="length of the no-op run (0: skip it)")
    parser.add_argument(
        "--rounds", type=int, default=1, help="with --baseline-ref: run each pair this many times, order swapped"
    )
    parser.add_argument("--size-kb", type=int, default=64)
    parser.add_argument("--lookup-earlier", type=int, default=10_000, help="earlier submissions (0: skip)")
    parser.add_argument("--lookup-prints", type=int, default=200, help="fingerprints per earlier submission")
    parser.add_argument("--lookup-repeats", type=int, default=100, help="timed look-ups of each size")
    parser.add_argument("--noop-worker", metavar="TASK", help=argparse.SUPPRESS)
    parser.add_argument(
        "--check-estimates", action="store_true", help="only check the wait page's estimates against actual finishes"
    )
    parser.add_argument("--estimate-seconds", type=float, default=20.0, help="length of the estimates run")
    parser.add_argument("--estimate-every", type=int, default=5, help="follow every n-th upload's wait")
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    if arguments.noop_worker:
        noop_worker(arguments.noop_worker)
    elif arguments.check_estimates:
        asyncio.run(check_estimates(arguments))
    else:
        asyncio.run(main(arguments))
