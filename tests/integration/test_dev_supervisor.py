"""`handin dev` (what `make run` runs) as a person meets it: a real process tree on free ports.

The banner appears only once the api and router answer; a component that
dies is named and restarted; ports already taken are refused before anything
starts; a component that keeps dying stops the run with a non-zero status.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from core.supervisor import RestartPolicy, Supervisor
from tests.services import free_port

WAIT_SECONDS = 90.0


class Output:
    """Lines of a child's merged stdout/stderr, read on a thread so the pipe never fills."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream], daemon=True).start()

    def wait_for(self, pattern: str, timeout: float = WAIT_SECONDS) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no line matching {pattern!r}; output so far:\n{''.join(self.seen[-60:])}")


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _dev(tmp_path: Path, api_port: int, router_port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDIN_")}
    env["HANDIN_REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    return subprocess.Popen(
        [sys.executable, "-m", "core.cli", "dev", "--port", str(api_port), "--router-port", str(router_port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Output, int, int]]:
    api_port, router_port = free_port(), free_port()
    process = _dev(tmp_path, api_port, router_port)
    try:
        yield process, Output(process), api_port, router_port
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if process.stdout is not None:
            process.stdout.close()


@pytest.mark.timeout(240)
def test_banner_after_ready_and_a_dead_router_is_named_and_restarted(dev: tuple) -> None:
    process, output, api_port, router_port = dev
    output.wait_for(rf"handin is running: open http://127\.0\.0\.1:{api_port}")
    router_pid = int(re.findall(r"router started \(pid (\d+)\)", "".join(output.seen))[-1])
    # The banner is a promise: both answer the moment it is printed.
    assert _healthy(f"http://127.0.0.1:{api_port}/healthz")
    assert _healthy(f"http://127.0.0.1:{router_port}/healthz")
    output.wait_for(r"virus scanning: ")

    os.kill(router_pid, signal.SIGKILL)
    output.wait_for(r"router exited with status -9; restarting in")
    new_pid = int(output.wait_for(r"router started \(pid (\d+)\)").group(1))
    assert new_pid != router_pid
    deadline = time.monotonic() + WAIT_SECONDS
    while not _healthy(f"http://127.0.0.1:{router_port}/healthz"):
        assert time.monotonic() < deadline, "the restarted router never answered"
        time.sleep(0.2)
    assert process.poll() is None, "the rest of the system kept running"
    assert _healthy(f"http://127.0.0.1:{api_port}/healthz")

    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=90) == 0


def test_ports_already_taken_are_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        process = _dev(tmp_path, taken, free_port())
        out, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert f"api port {taken} already in use" in out
    assert "handin is running" not in out
    assert "started (pid" not in out


def test_a_crash_loop_stops_everything_with_a_failing_status() -> None:
    lines: list[str] = []

    class Lines:
        def write(self, text: str) -> None:
            lines.append(text)

        def flush(self) -> None:
            pass

    def spawn(command: Sequence[str]) -> subprocess.Popen[bytes]:
        return subprocess.Popen(list(command))

    supervisor = Supervisor(
        spawn=spawn,
        policy=RestartPolicy(first_delay=0.01, max_delay=0.05, max_quick_exits=3),
        out=Lines(),  # type: ignore[arg-type]
    )
    supervisor.add("steady", [sys.executable, "-c", "import time; time.sleep(600)"])
    supervisor.add("broken", [sys.executable, "-c", "raise SystemExit(3)"])
    steady = supervisor.components["steady"].process
    assert supervisor.run(poll_interval=0.01) == 1
    text = "".join(lines)
    assert "broken exited with status 3; restarting in" in text
    assert "broken exited 3 times in a row (last status 3); giving up" in text
    assert steady is not None and steady.poll() is not None, "the other components were stopped too"
