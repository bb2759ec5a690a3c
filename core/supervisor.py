"""A small process supervisor for `handin dev`: restarts what exits, gives up on a crash loop.

One component exiting must not take the others down: the router dying is a
reconnect for open pages, not the end of the session. Each exit is named,
the component is restarted after a growing delay, and a component that keeps
dying young is a crash loop: everything stops and the exit status says so.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TextIO

# Workers drain on SIGTERM: running jobs finish, queued ones stay queued.
TERMINATE_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class RestartPolicy:
    """When to restart, how long to wait, and when repeated exits are a crash loop."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    # A component that ran at least this long before exiting starts over at first_delay.
    healthy_after: float = 60.0
    # This many short-lived runs in a row is a crash loop.
    max_quick_exits: int = 5

    def delay(self, quick_exits: int) -> float:
        return float(min(self.max_delay, self.first_delay * 2 ** max(0, quick_exits - 1)))


@dataclass
class Component:
    name: str
    command: Sequence[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_exits: int = 0
    restart_at: float | None = None


@dataclass
class Supervisor:
    """Starts components, restarts them with backoff, stops them all on a signal or a crash loop."""

    spawn: Callable[[Sequence[str]], subprocess.Popen[bytes]]
    policy: RestartPolicy = field(default_factory=RestartPolicy)
    out: TextIO = sys.stderr
    clock: Callable[[], float] = time.monotonic
    components: dict[str, Component] = field(default_factory=dict)
    stopping: bool = False
    failed: str | None = None

    def add(self, name: str, command: Sequence[str]) -> None:
        component = Component(name, list(command))
        self.components[name] = component
        self._start(component)

    def _start(self, component: Component) -> None:
        component.process = self.spawn(component.command)
        component.started_at = self.clock()
        component.restart_at = None
        self._say(f"{component.name} started (pid {component.process.pid})")

    def _say(self, text: str) -> None:
        print(f"handin dev: {text}", file=self.out, flush=True)

    def check(self) -> None:
        """One supervision round: notice exits, schedule and perform restarts."""
        now = self.clock()
        for component in self.components.values():
            process = component.process
            if component.restart_at is not None:
                if now >= component.restart_at:
                    self._start(component)
                continue
            if process is None or process.poll() is None:
                continue
            ran_for = now - component.started_at
            component.quick_exits = 0 if ran_for >= self.policy.healthy_after else component.quick_exits + 1
            if component.quick_exits >= self.policy.max_quick_exits:
                self.failed = (
                    f"{component.name} exited {component.quick_exits} times in a row "
                    f"(last status {process.returncode}); giving up"
                )
                self._say(self.failed)
                self.stopping = True
                return
            delay = self.policy.delay(max(1, component.quick_exits))
            component.restart_at = now + delay
            self._say(f"{component.name} exited with status {process.returncode}; restarting in {delay:g} s")

    def run(self, poll_interval: float = 0.5) -> int:
        """Supervise until SIGINT/SIGTERM or a crash loop; 0 after a signal, 1 after a crash loop."""

        def stop(_signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        try:
            while not self.stopping:
                self.check()
                time.sleep(poll_interval)
        finally:
            self.stop_all()
        return 1 if self.failed else 0

    def stop_all(self) -> None:
        running = [c.process for c in self.components.values() if c.process and c.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + TERMINATE_GRACE_SECONDS
        for process in running:
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
