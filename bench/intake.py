"""Upload acknowledgement: the asynchronous intake against the inline baseline.

Open-loop load of 1 MB uploads at a fixed rate against a real uvicorn serving
the api (PostgreSQL, Redis, local store), and in the same run against the
baseline endpoint that scans, stores, records and thumbnails before it
answers (bench/inline_app.py), the way the slow system did. Prints ack
latency p50/p95/p99 and achieved uploads/s for both, and the ratio.

    python -m bench.intake [--rate 50] [--seconds 20] [--size-kb 1024] [--tmpfs]

Workers are not started: the figure is what a student waits for, and in a
deployment the workers run on other nodes. clamd runs for the baseline only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import (
    BENCH_REDIS_URL,
    bench_database,
    bench_env,
    free_port,
    handin,
    open_loop,
    row,
    running,
    seed_students,
    tree_cpu_seconds,
)
from tests.fixtures.clamd import write_clamd_config


def upload_body(index: int, size: int) -> bytes:
    line = f"submission {index}: the quick brown fox jumps over the lazy dog.\n".encode()
    return (line * (size // len(line) + 1))[:size]


async def load(
    base_url: str, path: str, cookies: list[str], rate: float, count: int, size: int, server_pid: int | None = None
) -> dict[str, float]:
    bodies = [upload_body(i, size) for i in range(min(count, 64))]
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:

        async def send(index: int) -> bool:
            answer = await http.post(
                path,
                files={"file": (f"essay-{index}.txt", bodies[index % len(bodies)], "text/plain")},
                cookies={"handin_session": cookies[index % len(cookies)]},
            )
            return answer.status_code in (201, 202)

        cpu_before = tree_cpu_seconds(server_pid) if server_pid else 0.0
        result = await open_loop(rate, count, send)
        cpu_used = tree_cpu_seconds(server_pid) - cpu_before if server_pid else float("nan")
    summary = result.summary()
    summary["server_cpu_ms"] = cpu_used * 1000 / count
    return summary


def start_clamd(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = write_clamd_config(directory, port)
    process = subprocess.Popen(["clamd", "--config-file", str(config)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    import socket

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return process, port
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("clamd did not start")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=50.0, help="uploads per second offered")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the asynchronous run lasts")
    parser.add_argument("--baseline-seconds", type=float, default=10.0, help="how long the inline run lasts")
    parser.add_argument("--size-kb", type=int, default=1024)
    parser.add_argument("--tmpfs", action="store_true", help="keep uploads in /dev/shm (store on its own volume)")
    parser.add_argument("--api-workers", type=int, default=1, help="api server processes (both endpoints)")
    args = parser.parse_args()
    size = args.size_kb * 1024
    count = int(args.rate * args.seconds)
    baseline_count = int(args.rate * args.baseline_seconds)

    root = Path(tempfile.mkdtemp(prefix="handin-bench-", dir="/dev/shm" if args.tmpfs else None))
    import redis

    redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    async with bench_database() as database_url:
        seeded = await seed_students(database_url, students=max(count, baseline_count), max_bytes=2 * size)
        clamd, clamd_port = start_clamd(root / "clamd")
        env = bench_env(database_url, root, HANDIN_SCANNER__CLAMD_HOST="127.0.0.1",
                        HANDIN_SCANNER__CLAMD_PORT=str(clamd_port))
        figures = {}
        try:
            port = free_port()
            api = handin("api", "--port", str(port), "--workers", str(args.api_workers))
            with running(api, env, f"http://127.0.0.1:{port}/healthz") as server:
                base = f"http://127.0.0.1:{port}"
                await load(base, f"/api/assignments/{seeded.assignment_id}/submissions", seeded.cookies, 5, 10, size)
                figures["asynchronous intake"] = await load(
                    base, f"/api/assignments/{seeded.assignment_id}/submissions", seeded.cookies,
                    args.rate, count, size, server.pid,
                )
            port = free_port()
            inline = [sys.executable, "-m", "uvicorn", "bench.inline_app:create_inline_app", "--factory",
                      "--port", str(port), "--log-level", "warning", "--workers", str(args.api_workers)]
            with running(inline, env, f"http://127.0.0.1:{port}/healthz") as server:
                path = f"/bench/inline/assignments/{seeded.assignment_id}/submissions"
                base = f"http://127.0.0.1:{port}"
                await load(base, path, seeded.cookies, 2, 4, size)
                figures["inline baseline"] = await load(
                    base, path, seeded.cookies, args.rate, baseline_count, size, server.pid
                )
        finally:
            clamd.kill()
            redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
            shutil.rmtree(root, ignore_errors=True)  # a run leaves gigabytes of uploads (in RAM with --tmpfs)
    print(f"\nintake: {args.rate:g} uploads/s offered, {args.size_kb} KB each, store on "
          f"{'tmpfs' if args.tmpfs else 'the system disk'}, {os.cpu_count()} cores")
    for label, result in figures.items():
        print(row(label, result))
    ours, base = figures["asynchronous intake"], figures["inline baseline"]
    print(f"p99 ratio (inline / asynchronous): {base['p99_ms'] / ours['p99_ms']:.1f}x   "
          f"(targets: asynchronous p99 <= 100 ms, ratio >= 20x)")


if __name__ == "__main__":
    asyncio.run(main())
