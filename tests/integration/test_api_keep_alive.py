"""The api process keeps idle HTTP connections open for as long as it is configured to.

Proxies in front of it (ingress-nginx, cloud load balancers) keep idle upstream
connections for 60 s; uvicorn's own default closes them after 5 s, so a proxy
may send an upload on a connection the api is closing at that moment and answer
it 502. Here the real ``handin api`` process, a raw socket and a clock.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.system import wait_http
from tests.services import free_port

UVICORN_DEFAULT_SECONDS = 5
CONFIGURED_SECONDS = 7


def read_answer(connection: socket.socket) -> bytes:
    """One whole HTTP answer (headers and Content-Length body) from ``connection``."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += connection.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += connection.recv(4096)
    return head


def test_an_idle_connection_outlives_uvicorns_default_when_configured_longer(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "HANDIN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/handin.db",
        "HANDIN_SECURITY__INTERNAL_PORT": "0",
        "HANDIN_HTTP_KEEP_ALIVE_SECONDS": str(CONFIGURED_SECONDS),
        "HANDIN_LOG_LEVEL": "WARNING",
    }
    log = tmp_path / "api.log"
    with open(log, "wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "core.cli", "api", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=output,
            stderr=output,
        )
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", process, log)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
            connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert read_answer(connection).startswith(b"HTTP/1.1 200")
            idle_since = time.monotonic()
            # Waits for the api to close the idle connection (end of stream), however long it keeps it.
            assert connection.recv(1) == b""
            kept = time.monotonic() - idle_since
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert kept > UVICORN_DEFAULT_SECONDS + 1, f"closed after {kept:.1f} s"
