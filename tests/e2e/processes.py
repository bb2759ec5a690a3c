"""Long-running helper processes of the kind suite (`kubectl port-forward`), supervised.

A child whose pipes nobody reads blocks once the pipe buffer (64 KiB) is full:
`kubectl port-forward` prints a line per connection, so a probe at 10
requests/s wedged it within minutes. Here a thread per stream drains each pipe
into a log file and keeps the lines, and every wait has a timeout.

A port-forward to a Service follows one pod, picked when it starts, and ends
when that pod goes (a rollout, a scale-down). `PortForward` keeps the same local
port and starts `kubectl port-forward` again whenever it ends or reports the
pod lost, so the suite's URLs survive an upgrade (a few requests may fail while
it reconnects: probes that must see every request go through the Service from
inside the cluster instead, see test_kind.py).
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

KUBECTL_FORWARDING = r"Forwarding from 127\.0\.0\.1:(\d+)"
# kubectl keeps running after some of these; the forward is useless until restarted.
KUBECTL_BROKEN = r"lost connection to pod|error upgrading connection|unable to forward|pod is not running"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class LoggedProcess:
    """A child process whose stdout and stderr are drained to `log` as they come."""

    def __init__(
        self, args: Sequence[str], log: Path, on_line: Callable[[LoggedProcess, str, str], None] | None = None
    ) -> None:
        self.args = list(args)
        self.log_path = log
        self.on_line = on_line
        self.lines: list[tuple[str, str]] = []
        self._changed = threading.Condition()
        self._open_streams = 2
        log.parent.mkdir(parents=True, exist_ok=True)
        self._log = log.open("a", encoding="utf-8", buffering=1)
        self._log.write(f"$ {' '.join(self.args)}\n")
        self.process = subprocess.Popen(
            self.args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            bufsize=1,
        )
        assert self.process.stdout is not None and self.process.stderr is not None
        self._readers = [
            threading.Thread(target=self._drain, args=("stdout", self.process.stdout), daemon=True),
            threading.Thread(target=self._drain, args=("stderr", self.process.stderr), daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _drain(self, name: str, stream: IO[str]) -> None:
        for raw in stream:
            line = raw.rstrip("\n")
            with self._changed:
                self.lines.append((name, line))
                self._log.write(f"[{name}] {line}\n")
                self._changed.notify_all()
            if self.on_line is not None:
                self.on_line(self, name, line)
        with self._changed:
            self._open_streams -= 1
            self._changed.notify_all()

    def _find(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        for _, line in self.lines:
            if match := pattern.search(line):
                return match
        return None

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match[str]:
        """The first output line matching `pattern`; raises if the process ends or `timeout` passes first."""
        compiled = re.compile(pattern)
        with self._changed:
            self._changed.wait_for(lambda: self._find(compiled) or self._open_streams == 0, timeout)
            match = self._find(compiled)
            tail = "\n".join(line for _, line in self.lines[-20:])
        if match is None:
            state = "ended" if self._open_streams == 0 else f"said nothing like it within {timeout:g} s"
            raise RuntimeError(f"{' '.join(self.args)} {state} (waiting for /{pattern}/); last output:\n{tail}")
        return match

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout)
        for reader in self._readers:
            reader.join(timeout)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()
        with self._changed:
            self._log.close()


class PortForward:
    """Keeps `command(local_port)` forwarding to 127.0.0.1:`local_port`, restarting it when it ends.

    `ready` is the output line that says the forward listens; `broken` a line
    that says it no longer forwards although the process may live on.
    """

    def __init__(
        self,
        command: Callable[[int], Sequence[str]],
        log: Path,
        *,
        ready: str = KUBECTL_FORWARDING,
        broken: str = KUBECTL_BROKEN,
        ready_timeout: float = 60,
        local_port: int | None = None,
    ) -> None:
        self.command = command
        self.log = log
        self.ready = ready
        self.broken = re.compile(broken)
        self.ready_timeout = ready_timeout
        self.port = local_port or free_port()
        self.restarts = 0
        self.process: LoggedProcess | None = None
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None

    def __enter__(self) -> PortForward:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._launch()
        self._supervisor = threading.Thread(target=self._supervise, name="port-forward", daemon=True)
        self._supervisor.start()

    def _launch(self) -> None:
        self.process = LoggedProcess(self.command(self.port), self.log, on_line=self._watch)
        try:
            self.process.wait_for_line(self.ready, self.ready_timeout)
        except RuntimeError:
            self.process.stop()
            raise

    def _watch(self, process: LoggedProcess, stream: str, line: str) -> None:
        if self.broken.search(line):
            # Ending it hands over to the supervisor, which starts a new one.
            process.process.terminate()

    def _supervise(self) -> None:
        while not self._stopping.is_set():
            process = self.process
            if process is not None and process.alive():
                self._stopping.wait(0.2)
                continue
            if process is not None:
                process.stop()
            try:
                self._launch()
            except (RuntimeError, OSError):
                self._stopping.wait(1)  # the Service may have no ready pod for a moment: try again
                continue
            self.restarts += 1

    def stop(self) -> None:
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(self.ready_timeout + 10)
        if self.process is not None:
            self.process.stop()


def wait_until(condition: Callable[[], object], timeout: float, what: str, interval: float = 0.1) -> object:
    """Polls `condition` until it returns something true; raises after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
    return value
