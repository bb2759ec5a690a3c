"""The kind suite's process helpers, with real child processes standing in for kubectl.

These need no cluster and run everywhere (conftest.py skips only what needs one).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path

import pytest

from tests.e2e.processes import LoggedProcess, PortForward, wait_until

# Writes far more than a pipe holds to both streams before saying READY, then waits to be stopped.
CHATTY = """
import sys, time
for n in range(20000):
    print(f"stdout line {n:05d} " + "x" * 60)
    print(f"stderr line {n:05d} " + "y" * 60, file=sys.stderr)
print("READY", flush=True)
while True:
    time.sleep(1)
"""

# A stand-in for `kubectl port-forward svc/api PORT:80`: listens on PORT, answers each
# connection with its pid; "dies" (like the pod it follows) after one connection, or, with
# "linger", says it lost the pod and keeps running without forwarding anything.
FAKE_FORWARD = """
import os, socket, sys, time
port, mode = int(sys.argv[1]), sys.argv[2]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
print(f"Forwarding from 127.0.0.1:{port} -> 80", flush=True)
connection, _ = server.accept()
connection.sendall(str(os.getpid()).encode())
connection.close()
if mode == "linger":
    server.close()
    print("E0101 portforward.go:413] lost connection to pod", file=sys.stderr, flush=True)
    while True:
        time.sleep(1)
"""


def ask(port: int) -> str | None:
    """The pid of whoever answers on `port`, or None if nobody does yet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
            return connection.recv(64).decode() or None
    except OSError:
        return None


def test_a_chatty_process_is_drained_and_logged(tmp_path: Path) -> None:
    log = tmp_path / "chatty.log"
    process = LoggedProcess([sys.executable, "-c", CHATTY], log)
    try:
        # Undrained, the child blocks on a full pipe long before READY.
        process.wait_for_line("^READY$", timeout=60)
    finally:
        process.stop()
    text = log.read_text()
    assert "[stdout] stdout line 19999" in text and "[stderr] stderr line 19999" in text


def test_waiting_for_a_line_fails_when_the_process_ends_without_it(tmp_path: Path) -> None:
    process = LoggedProcess([sys.executable, "-c", "print('error: no such service')"], tmp_path / "x.log")
    try:
        with pytest.raises(RuntimeError, match=r"(?s)ended.*last output:.*no such service"):
            process.wait_for_line("Forwarding from", timeout=60)
    finally:
        process.stop()


def test_waiting_for_a_line_gives_up_at_its_timeout(tmp_path: Path) -> None:
    process = LoggedProcess([sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "x.log")
    try:
        with pytest.raises(RuntimeError, match="said nothing"):
            process.wait_for_line("Forwarding from", timeout=0.5)
    finally:
        process.stop()
    assert process.process.returncode is not None


@pytest.mark.parametrize("mode", ["exit", "linger"])
def test_a_port_forward_whose_pod_went_is_started_again_on_the_same_port(tmp_path: Path, mode: str) -> None:
    forward = PortForward(lambda port: [sys.executable, "-c", FAKE_FORWARD, str(port), mode], tmp_path / "pf.log")
    with forward:
        first = ask(forward.port)
        assert first is not None
        # The first "pod" is gone now; the same local port answers again, from a new process.
        second = wait_until(lambda: (pid := ask(forward.port)) and pid != first and pid, 60, "a new port-forward")
        assert forward.restarts >= 1
        assert second != first
    assert forward.process is not None and not forward.process.alive()
