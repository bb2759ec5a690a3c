"""Wake benchmark: how soon a job queued to a waiting worker starts, and what a job's queue traffic costs.

    python -m bench.wake                          # the shipped worker
    python -m bench.wake --baseline-ref f84223c   # and a commit's worker beside it, rounds alternating
    python -m bench.wake --job-ms 30              # each job then waits 30 ms (I/O): jobs overlap

A worker process (`workers.run.serve`, the shipped settings: poll_delay,
max_jobs, the wake list) serves a task whose job only notes when it started
and that it is done (an RPUSH each). This process queues jobs as the pipeline does
(core.queues.enqueue_step, which leaves a wake token) at random gaps of 5 to
100 ms, so the worker is mostly waiting when a job comes, as a step's worker
is between uploads; with --job-ms each job, once started, awaits that long
(a step waiting on I/O), so a job often comes while others are running.
Printed: enqueue-to-start percentiles (the same machine's clock at both
ends), the worker's CPU per job (its whole process: the wait, the claim,
arq's run and finish, the job) and the Redis server's.
No database is touched: this is the queue alone.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from redis.asyncio import Redis

from bench.common import (
    BENCH_REDIS_URL,
    SECRET,
    percentile,
    process_cpu_seconds,
    redis_cpu_seconds,
    running,
    source_tree,
)
from core import keys
from core.queues import connect, enqueue_step

TASK = "wakebench"
STARTED = "handin:bench:wake:started"
DONE = "handin:bench:wake:done"

# The worker, run from the tree measured (cwd and PYTHONPATH): its job notes its submission and start
# time, awaits HANDIN_BENCH_JOB_SECONDS, and notes that it is done.
WORKER = f"""
import asyncio
import os
import time
from arq import func
from core.logs import configure_logging
from workers.base import worker_settings
from workers.run import serve

async def {TASK}(ctx, submission_id):
    await ctx["redis"].rpush("{STARTED}", f"{{submission_id}} {{time.time()}}")
    await asyncio.sleep(float(os.environ["HANDIN_BENCH_JOB_SECONDS"]))
    await ctx["redis"].rpush("{DONE}", submission_id)

configure_logging()
serve("{TASK}", worker_settings("{TASK}", [func({TASK}, name="{TASK}")]))
"""


@dataclass
class Figures:
    latencies_ms: list[float]
    worker_cpu_ms: float
    redis_cpu_ms: float


async def one_run(source: Path, jobs: int, seed: int, job_seconds: float) -> Figures:
    redis = Redis.from_url(BENCH_REDIS_URL)
    pool = await connect(BENCH_REDIS_URL)
    queue = keys.queue_name(TASK)
    await redis.delete(STARTED, DONE, queue, keys.wake_list(queue))
    with tempfile.TemporaryDirectory(prefix="handin-bench-wake-") as folder:
        env = {
            "HANDIN_REDIS_URL": BENCH_REDIS_URL,
            "HANDIN_DATABASE_URL": f"sqlite+aiosqlite:///{folder}/unused.db",
            "HANDIN_SECRET_KEY": SECRET,
            "HANDIN_WORKER__HTTP_PORT": "0",
            "PYTHONPATH": str(source),
            "PATH": "/usr/bin:/bin",
            "HANDIN_BENCH_JOB_SECONDS": str(job_seconds),
        }
        with running([sys.executable, "-c", WORKER], env, cwd=source) as worker:
            # Started and waiting: one job through before anything is timed.
            await enqueue_step(pool, TASK, 0)
            await until_done(redis, 1)
            await asyncio.sleep(0.5)  # past its first wake: waiting on its wake list again
            cpu_before = process_cpu_seconds(worker.pid) or 0.0
            redis_before = redis_cpu_seconds(BENCH_REDIS_URL)
            gaps = random.Random(seed)
            queued: dict[int, float] = {}
            for submission_id in range(1, jobs + 1):
                await asyncio.sleep(gaps.uniform(0.005, 0.1))
                queued[submission_id] = time.time()
                await enqueue_step(pool, TASK, submission_id)
            await until_done(redis, jobs + 1)
            cpu_after = process_cpu_seconds(worker.pid) or 0.0
            redis_after = redis_cpu_seconds(BENCH_REDIS_URL)
    started = {}
    for entry in await redis.lrange(STARTED, 0, -1):
        submission_id, at = entry.decode().split()
        started[int(submission_id)] = float(at)
    await redis.delete(STARTED, DONE, queue, keys.wake_list(queue))
    await redis.aclose()
    await pool.aclose()
    return Figures(
        latencies_ms=sorted((started[job] - queued[job]) * 1000 for job in queued),
        worker_cpu_ms=(cpu_after - cpu_before) * 1000 / jobs,
        # The queueing side's commands count here too (the enqueue script), the same for both.
        redis_cpu_ms=(redis_after - redis_before) * 1000 / jobs,
    )


async def until_done(redis: Redis, count: int) -> None:
    deadline = time.monotonic() + 120
    while await redis.llen(DONE) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not finish its jobs")
        await asyncio.sleep(0.05)


def line(label: str, runs: list[Figures]) -> str:
    latencies = sorted(value for run in runs for value in run.latencies_ms)
    worker = sum(run.worker_cpu_ms for run in runs) / len(runs)
    redis = sum(run.redis_cpu_ms for run in runs) / len(runs)
    p50, p95, p99 = (percentile(latencies, q) for q in (0.5, 0.95, 0.99))
    return (
        f"{label:>9}: enqueue-to-start p50 {p50:.2f} ms  p95 {p95:.2f} ms  p99 {p99:.2f} ms;"
        f" worker CPU {worker:.2f} ms/job, Redis CPU {redis:.2f} ms/job"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=400, help="jobs per run")
    parser.add_argument("--baseline-ref", help="also run the worker of this git commit, rounds alternating")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--job-ms", type=float, default=0.0, help="how long each job awaits once started")
    options = parser.parse_args()
    results: dict[str, list[Figures]] = {"shipped": [], "baseline": []}
    with source_tree(None) as shipped, source_tree(options.baseline_ref) as baseline:
        for round_number in range(options.rounds):
            order = [("shipped", shipped), ("baseline", baseline)] if options.baseline_ref else [("shipped", shipped)]
            if round_number % 2:
                order.reverse()
            for label, source in order:
                figures = await one_run(source, options.jobs, round_number, options.job_ms / 1000)
                results[label].append(figures)
                print(line(f"{label} ({round_number + 1})", [figures]), flush=True)
    print()
    print(line("shipped", results["shipped"]))
    if results["baseline"]:
        print(line(f"baseline ({options.baseline_ref})", results["baseline"]))
        ratio = sum(r.worker_cpu_ms for r in results["shipped"]) / sum(r.worker_cpu_ms for r in results["baseline"])
        print(f"worker CPU per job, shipped / baseline: {ratio:.2f}x")


if __name__ == "__main__":
    asyncio.run(main())
