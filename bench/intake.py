"""Upload acknowledgement: the asynchronous intake against the inline baseline.

Open-loop load of 1 MB uploads at a fixed rate against a real uvicorn serving
the api (PostgreSQL, Redis, local store), and in the same run against the
baseline endpoint that scans, stores, records and thumbnails before it
answers (bench/inline_app.py), the way the slow system did. Prints ack
latency p50/p95/p99 and achieved uploads/s for both, and the ratio.

``--mode tus`` also sends each upload the way the student's page does:
a tus creation, then the file in ``--chunk-kb`` PATCHes one after another;
the latency is from when the upload was due to the last chunk's answer (the
one naming the submission), and each request's own latency is printed too.
It skips the inline baseline and prints the multipart figures beside (same
server, same moment); ``--mode all`` runs all three.

    python -m bench.intake [--mode plain|tus|all] [--rate 50] [--seconds 20] [--size-kb 1024] [--chunk-kb 256]
                           [--tmpfs]

Workers are not started: the figure is what a student waits for, and in a
deployment the workers run on other nodes. clamd runs for the baseline only.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bench.common import (
    BENCH_REDIS_URL,
    Browser,
    LoadResult,
    bench_database,
    bench_env,
    free_port,
    handin,
    open_loop,
    open_pages,
    row,
    running,
    seed_students,
    tree_cpu_seconds,
)
from tests.fixtures.clamd import write_clamd_config


class _Done(Exception):
    """The tus-only mode skips the inline baseline."""


def upload_body(index: int, size: int) -> bytes:
    line = f"submission {index}: the quick brown fox jumps over the lazy dog.\n".encode()
    return (line * (size // len(line) + 1))[:size]


async def load(
    base_url: str, path: str, browsers: list[Browser], rate: float, count: int, size: int, server_pid: int | None = None
) -> dict[str, float]:
    bodies = [upload_body(i, size) for i in range(min(count, 64))]
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:

        async def send(index: int) -> bool:
            answer = await http.post(
                path,
                files={"file": (f"essay-{index}.txt", bodies[index % len(bodies)], "text/plain")},
                headers=browsers[index % len(browsers)].headers(),
            )
            return answer.status_code in (201, 202)

        cpu_before = tree_cpu_seconds(server_pid) if server_pid else 0.0
        result = await open_loop(rate, count, send)
        cpu_used = tree_cpu_seconds(server_pid) - cpu_before if server_pid else float("nan")
    summary = result.summary()
    summary["server_cpu_ms"] = cpu_used * 1000 / count
    return summary


async def load_tus(
    base_url: str,
    assignment_id: int,
    browsers: list[Browser],
    rate: float,
    count: int,
    size: int,
    chunk: int,
    server_pid: int | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Whole uploads (creation + PATCHes) at ``rate``; returns their figures and each request's."""
    bodies = [upload_body(i, size) for i in range(min(count, 64))]
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    requests_ms: list[float] = []
    request_errors = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=120, limits=limits) as http:

        async def timed(method: str, url: str, expect: int, **kwargs: Any) -> httpx.Response | None:
            nonlocal request_errors
            began = time.perf_counter()
            answer = await http.request(method, url, **kwargs)
            if answer.status_code != expect:
                request_errors += 1
                return None
            requests_ms.append((time.perf_counter() - began) * 1000)
            return answer

        async def send(index: int) -> bool:
            body = bodies[index % len(bodies)]
            headers = {**browsers[index % len(browsers)].headers(), "Tus-Resumable": "1.0.0"}
            name = base64.b64encode(f"essay-{index}.txt".encode()).decode()
            created = await timed(
                "POST",
                f"/api/assignments/{assignment_id}/uploads",
                201,
                headers={**headers, "Upload-Length": str(size), "Upload-Metadata": f"filename {name}"},
            )
            if created is None:
                return False
            url = created.headers["location"]
            answer = None
            for offset in range(0, size, chunk):
                answer = await timed(
                    "PATCH",
                    url,
                    204,
                    content=body[offset : offset + chunk],
                    headers={
                        **headers,
                        "Upload-Offset": str(offset),
                        "Content-Type": "application/offset+octet-stream",
                    },
                )
                if answer is None:
                    return False
            return answer is not None and "handin-submission-id" in answer.headers

        cpu_before = tree_cpu_seconds(server_pid) if server_pid else 0.0
        result = await open_loop(rate, count, send)
        cpu_used = tree_cpu_seconds(server_pid) - cpu_before if server_pid else float("nan")
    summary = result.summary()
    summary["server_cpu_ms"] = cpu_used * 1000 / count
    per_request = LoadResult(requests_ms, request_errors, result.elapsed_s).summary()
    per_request["server_cpu_ms"] = float("nan")
    return summary, per_request


def start_clamd(directory: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    directory.mkdir(parents=True, exist_ok=True)
    config = write_clamd_config(directory, port)
    process = subprocess.Popen(
        ["clamd", "--config-file", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
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
    parser.add_argument(
        "--mode",
        choices=("plain", "tus", "all"),
        default="plain",
        help="plain: multipart and the inline baseline; tus: multipart and tus",
    )
    parser.add_argument("--chunk-kb", type=int, default=256, help="tus PATCH size")
    parser.add_argument("--tmpfs", action="store_true", help="keep uploads in /dev/shm (store on its own volume)")
    parser.add_argument("--api-workers", type=int, default=1, help="api server processes (both endpoints)")
    args = parser.parse_args()
    size = args.size_kb * 1024
    chunk = args.chunk_kb * 1024
    count = int(args.rate * args.seconds)
    baseline_count = int(args.rate * args.baseline_seconds)

    root = Path(tempfile.mkdtemp(prefix="handin-bench-", dir="/dev/shm" if args.tmpfs else None))
    import redis

    redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
    async with bench_database() as database_url:
        seeded = await seed_students(database_url, students=max(count, baseline_count) + 10, max_bytes=2 * size)
        clamd, clamd_port = start_clamd(root / "clamd")
        env = bench_env(
            database_url, root, HANDIN_SCANNER__CLAMD_HOST="127.0.0.1", HANDIN_SCANNER__CLAMD_PORT=str(clamd_port)
        )
        figures = {}
        try:
            # Each server is its own site (HANDIN_PUBLIC_URL): uploads carry its Origin and the CSRF
            # token its page rendered for each student, fetched before the clock starts.
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            api = handin("api", "--port", str(port), "--workers", str(args.api_workers))
            with running(api, {**env, "HANDIN_PUBLIC_URL": base}, f"{base}/healthz") as server:
                browsers = await open_pages(base, seeded.cookies)
                # The multipart upload in every mode: the figure the others are compared with.
                path = f"/api/assignments/{seeded.assignment_id}/submissions"
                await load(base, path, browsers, 5, 10, size)
                figures["asynchronous intake"] = await load(base, path, browsers, args.rate, count, size, server.pid)
                if args.mode in ("tus", "all"):
                    # Warm-up uploads use the last students: each student's attempts are few.
                    spare = browsers[count:] or browsers
                    await load_tus(base, seeded.assignment_id, spare, 5, 10, size, chunk)
                    whole, requests = await load_tus(
                        base, seeded.assignment_id, browsers, args.rate, count, size, chunk, server.pid
                    )
                    figures[f"tus, whole upload ({size // chunk} chunks)"] = whole
                    figures["tus, each request"] = requests
            if args.mode == "tus":
                raise _Done
            port = free_port()
            base = f"http://127.0.0.1:{port}"
            inline = [
                sys.executable,
                "-m",
                "uvicorn",
                "bench.inline_app:create_inline_app",
                "--factory",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--workers",
                str(args.api_workers),
            ]
            with running(inline, {**env, "HANDIN_PUBLIC_URL": base}, f"{base}/healthz") as server:
                browsers = await open_pages(base, seeded.cookies)
                path = f"/bench/inline/assignments/{seeded.assignment_id}/submissions"
                await load(base, path, browsers, 2, 4, size)
                figures["inline baseline"] = await load(
                    base, path, browsers, args.rate, baseline_count, size, server.pid
                )
        except _Done:
            pass
        finally:
            clamd.kill()
            redis.Redis.from_url(BENCH_REDIS_URL).flushdb()
            shutil.rmtree(root, ignore_errors=True)  # a run leaves gigabytes of uploads (in RAM with --tmpfs)
    print(
        f"\nintake: {args.rate:g} uploads/s offered, {args.size_kb} KB each, store on "
        f"{'tmpfs' if args.tmpfs else 'the system disk'}, {os.cpu_count()} cores"
    )
    for label, result in figures.items():
        print(row(label, result))
    if args.mode == "tus":
        return
    ours, inline_figures = figures["asynchronous intake"], figures["inline baseline"]
    print(
        f"p99 ratio (inline / asynchronous): {inline_figures['p99_ms'] / ours['p99_ms']:.1f}x   "
        f"(targets: asynchronous p99 <= 100 ms, ratio >= 20x)"
    )


if __name__ == "__main__":
    asyncio.run(main())
