"""Pipeline throughput: submissions fully processed per second, per-step latencies.

Queues N text submissions at once (files already in the incoming area, rows
as the api writes them) and runs one real worker process per task (`handin
worker <task>`) against PostgreSQL, Redis, clamd and a local store, with
receipts written to the outbox and the admin webhook posted to a local
stand-in. Prints submissions/s and, per step, the time it ran and the time it
waited in its queue (p50/p95/p99), read from the step rows.

    python -m bench.pipeline [--submissions 300] [--size-kb 64]

Also writes the measured per-step service times to bench/results/pipeline.json,
which bench/autoscale.py uses when present.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import tempfile
import threading
import time
import uuid
from http.server import ThreadingHTTPServer
from pathlib import Path

import redis as sync_redis
from sqlalchemy import func, select, update

from bench.common import (
    BENCH_REDIS_URL,
    bench_database,
    bench_env,
    handin,
    percentile,
    running,
    seed_students,
)
from bench.intake import start_clamd, upload_body
from core.clock import utcnow
from core.db import make_engine, make_sessionmaker, transaction
from core.keys import TASKS
from core.models import Submission, SubmissionStep, User
from core.pipeline import FIRST_STEPS, STEP_NAMES
from core.queues import connect, enqueue_step
from core.settings import Settings
from core.storage import Area, make_storage
from tests.fixtures.admin_server import FakeAdminSystem, _handler_for

RESULTS = Path(__file__).parent / "results" / "pipeline.json"


async def queue_submissions(database_url: str, root: Path, assignment_id: int, count: int, size: int) -> list[int]:
    settings = Settings(database_url=database_url, storage={
        "incoming_dir": root / "incoming", "root": root / "store", "quarantine_dir": root / "quarantine",
        "thumbnails_dir": root / "thumbnails"})
    storage = make_storage(settings)
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    ids: list[int] = []
    now = utcnow()
    async with transaction(sessions) as session:
        user_id = await session.scalar(select(func.min(User.id)))
    for index in range(count):
        content = upload_body(index, size)
        key = f"{assignment_id}/{uuid.uuid4().hex}"
        await storage.put_bytes(Area.incoming, key, content)
        async with transaction(sessions) as session:
            submission = Submission(
                assignment_id=assignment_id, user_id=user_id or 1, attempt=index + 1, late=False,
                sha256=hashlib.sha256(content).hexdigest(), size=len(content),
                original_filename=f"essay-{index}.txt", content_type="text/plain", kind="text",
                storage_key=key, status="processing", received_at=now,
            )
            session.add(submission)
            await session.flush()
            session.add_all(
                SubmissionStep(submission_id=submission.id, step=step,
                               state="queued" if step in FIRST_STEPS else "pending",
                               queued_at=now if step in FIRST_STEPS else None)
                for step in STEP_NAMES
            )
            ids.append(submission.id)
    await engine.dispose()
    return ids


async def mark_received_now(database_url: str, ids: list[int]) -> None:
    """Upload-to-complete counts from when the whole batch is queued."""
    engine = make_engine(database_url)
    now = utcnow()
    async with transaction(make_sessionmaker(engine)) as session:
        await session.execute(update(Submission).where(Submission.id.in_(ids)).values(received_at=now))
        await session.execute(
            update(SubmissionStep).where(SubmissionStep.submission_id.in_(ids), SubmissionStep.queued_at.is_not(None))
            .values(queued_at=now)
        )
    await engine.dispose()


async def wait_until_done(database_url: str, ids: list[int], limit_s: float) -> float:
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    start = time.perf_counter()
    try:
        while time.perf_counter() - start < limit_s:
            async with sessions() as session:
                open_count = await session.scalar(
                    select(func.count()).select_from(Submission)
                    .where(Submission.id.in_(ids), Submission.completed_at.is_(None))
                )
            if not open_count:
                return time.perf_counter() - start
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{open_count} submissions still open after {limit_s:g} s")
    finally:
        await engine.dispose()


async def step_figures(database_url: str, ids: list[int]) -> dict[str, dict[str, float]]:
    engine = make_engine(database_url)
    sessions = make_sessionmaker(engine)
    async with sessions() as session:
        rows = list(await session.scalars(select(SubmissionStep).where(SubmissionStep.submission_id.in_(ids))))
        submissions = list(await session.scalars(select(Submission).where(Submission.id.in_(ids))))
    await engine.dispose()
    figures: dict[str, dict[str, float]] = {}
    for step in STEP_NAMES:
        ran = [(r.finished_at - r.started_at).total_seconds() * 1000 for r in rows
               if r.step == step and r.started_at and r.finished_at and r.state == "succeeded"]
        waited = [(r.started_at - r.queued_at).total_seconds() * 1000 for r in rows
                  if r.step == step and r.started_at and r.queued_at]
        if ran:
            figures[step] = {"run_p50": percentile(ran, .5), "run_p95": percentile(ran, .95),
                             "run_p99": percentile(ran, .99), "wait_p50": percentile(waited, .5),
                             "wait_p99": percentile(waited, .99), "count": len(ran)}
    total = [(s.completed_at - s.received_at).total_seconds() * 1000 for s in submissions if s.completed_at]
    figures["upload-to-complete"] = {"run_p50": percentile(total, .5), "run_p95": percentile(total, .95),
                                     "run_p99": percentile(total, .99), "wait_p50": 0.0, "wait_p99": 0.0,
                                     "count": len(total)}
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--submissions", type=int, default=300)
    parser.add_argument("--size-kb", type=int, default=64)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="handin-pipeline-"))
    sync_redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    admin = FakeAdminSystem(secret="bench-admin")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(admin))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    async with bench_database() as database_url:
        seeded = await seed_students(database_url, students=1)
        ids = await queue_submissions(database_url, root, seeded.assignment_id, args.submissions, args.size_kb * 1024)
        clamd, clamd_port = start_clamd(root / "clamd")
        env = bench_env(database_url, root, HANDIN_SCANNER__CLAMD_HOST="127.0.0.1",
                        HANDIN_SCANNER__CLAMD_PORT=str(clamd_port),
                        HANDIN_ADMIN__URL=f"http://127.0.0.1:{server.server_address[1]}/records",
                        HANDIN_ADMIN__SECRET=admin.secret)
        try:
            from contextlib import ExitStack

            with ExitStack() as stack:
                for task in TASKS:
                    stack.enter_context(running(handin("worker", task), env))
                await mark_received_now(database_url, ids)
                pool = await connect(BENCH_REDIS_URL)
                for submission_id in ids:
                    await enqueue_step(pool, "scan", submission_id)
                await pool.aclose()
                elapsed = await wait_until_done(database_url, ids, limit_s=600)
                figures = await step_figures(database_url, ids)
        finally:
            clamd.kill()
            server.shutdown()
            sync_redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
            shutil.rmtree(root, ignore_errors=True)
    print(f"\npipeline: {len(ids)} submissions of {args.size_kb} KB, one worker process per task")
    print(f"fully processed: {len(ids) / elapsed:.1f} submissions/s ({elapsed:.1f} s)")
    print(f"{'step':<20} {'run p50':>9} {'run p95':>9} {'run p99':>9} {'wait p50':>9} {'wait p99':>9}  (ms)")
    for step, f in figures.items():
        print(f"{step:<20} {f['run_p50']:9.0f} {f['run_p95']:9.0f} {f['run_p99']:9.0f} "
              f"{f['wait_p50']:9.0f} {f['wait_p99']:9.0f}")
    RESULTS.parent.mkdir(exist_ok=True)
    service = {step: round(f["run_p50"] / 1000, 4) for step, f in figures.items() if step in STEP_NAMES}
    RESULTS.write_text(json.dumps({"service_seconds_p50": service, "submissions_per_second": len(ids) / elapsed},
                                  indent=2))


if __name__ == "__main__":
    asyncio.run(main())
