"""Starting the local servers tests talk to: free ports, a Redis server of their own, and the
settings (as an object and as HANDIN_* variables) that point the project's processes at them."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import time
from pathlib import Path

from core.devserver import redis_binary
from core.settings import Settings

START_TIMEOUT = 30.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes] | None = None, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before listening on {port}")
        time.sleep(0.05)
    raise RuntimeError(f"nothing listened on 127.0.0.1:{port} within {timeout:g} s")


def start_redis_server(directory: Path, port: int | None = None) -> tuple[subprocess.Popen[bytes], str]:
    """A private redis-server on a free port, keeping nothing on disk.

    Pub/sub channels are shared by every database of a server, so only a
    server of its own keeps another run's events away from a test.
    """
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [
            redis_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process)
    except RuntimeError:
        process.kill()
        raise
    return process, f"redis://127.0.0.1:{port}/0"


def local_settings(database_url: str, redis_url: str, folder: Path) -> Settings:
    """Settings pointing at one database, one Redis and storage folders under `folder`."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        storage={
            "incoming_dir": folder / "incoming",
            "root": folder / "store",
            "quarantine_dir": folder / "quarantine",
            "thumbnails_dir": folder / "thumbnails",
        },
        smtp={"outbox_dir": folder / "outbox"},
        log_json=False,
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The HANDIN_* variables that give a subprocess the same database, Redis and folders as `settings`
    (the way the chart configures the pods)."""
    storage = settings.storage
    env = {
        "HANDIN_DATABASE_URL": settings.database_url,
        "HANDIN_REDIS_URL": settings.redis_url,
        "HANDIN_STORAGE__INCOMING_DIR": str(storage.incoming_dir),
        "HANDIN_STORAGE__ROOT": str(storage.root),
        "HANDIN_STORAGE__QUARANTINE_DIR": str(storage.quarantine_dir),
        "HANDIN_SMTP__OUTBOX_DIR": str(settings.smtp.outbox_dir),
    }
    if storage.thumbnails_dir is not None:
        env["HANDIN_STORAGE__THUMBNAILS_DIR"] = str(storage.thumbnails_dir)
    return env
