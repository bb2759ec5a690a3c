"""The images, built once per session with podman, and containers started from them.

Containers run as the image's own (non-root) user on a read-only root with a
tmpfs at /tmp, on the host's network so they reach this suite's Redis and
PostgreSQL at 127.0.0.1, as the chart's pods reach theirs. Where podman is
missing or cannot run a container, every test here is skipped with the reason.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import create_pg_database, drop_pg_database, pg_url

REPO_ROOT = Path(__file__).resolve().parents[2]
TAG = "dev"
# What the smoke tests start; scripts/build-images.sh builds these (and caches every layer).
IMAGES = ("api", "router", "autoscaler", "worker-scan", "worker-thumbnail")
# This sandbox refuses crun's cgroup calls and rlimits above what runc may set here.
RUNTIME_FLAGS = ["--runtime", "runc", "--ulimit", "nofile=16384:16384", "--ulimit", "nproc=16384:16384"]
BUILD_TIMEOUT = 3600.0
START_TIMEOUT = 90.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "images: builds the container images with podman and starts them")


def image(name: str) -> str:
    return f"localhost/handin-{name}:{TAG}"


def podman(*args: str, timeout: float = 120.0, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result


def _cannot_run_containers(base: str) -> str | None:
    """Why podman cannot start a container from `base` here, or None if it can."""
    probe = podman("run", "--rm", *RUNTIME_FLAGS, base, "true", check=False)
    return None if probe.returncode == 0 else probe.stderr.strip()[-500:]


@pytest.fixture(scope="session")
def built_images() -> tuple[str, ...]:
    """Builds the images the smoke tests start (a few seconds when nothing changed)."""
    if shutil.which("podman") is None:
        pytest.skip("podman is not installed (scripts/test-services.sh installs podman, buildah, runc, debootstrap)")
    build = subprocess.run(
        [str(REPO_ROOT / "scripts/build-images.sh"), *IMAGES],
        capture_output=True, text=True, timeout=BUILD_TIMEOUT, cwd=REPO_ROOT,
    )  # fmt: skip
    if build.returncode != 0:
        base = next(
            line.split("=", 1)[1]
            for line in (REPO_ROOT / "images/api.Dockerfile").read_text().splitlines()
            if line.startswith("ARG PYTHON_IMAGE=")
        )
        if podman("image", "exists", base, check=False).returncode != 0:
            pytest.skip(f"no base image {base}: it cannot be pulled or built here\n{build.stdout}{build.stderr}")
        reason = _cannot_run_containers(base)
        if reason:
            pytest.skip(f"podman cannot run containers here: {reason}")
        pytest.fail(f"building the images failed:\n{build.stdout}\n{build.stderr}")
    return IMAGES


@dataclass
class Container:
    id: str
    name: str

    def logs(self) -> str:
        result = podman("logs", self.id, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        result = podman("inspect", "--format", "{{.State.Running}}", self.id, check=False)
        return result.stdout.strip() == "true"


class Containers:
    """Starts containers read-only as their image's user; removes every one at the end of the test."""

    def __init__(self) -> None:
        self.started: list[Container] = []

    def run_args(self, env: dict[str, str], volumes: list[Path]) -> list[str]:
        args = [*RUNTIME_FLAGS, "--read-only", "--tmpfs", "/tmp", "--network", "host"]
        for key, value in env.items():
            args += ["--env", f"{key}={value}"]
        for volume in volumes:
            # :U hands the folder to the container's user, as a pod's fsGroup would.
            args += ["--volume", f"{volume}:{volume}:U"]
        return args

    def start(
        self, name: str, *command: str, env: dict[str, str] | None = None, volumes: list[Path] | None = None
    ) -> Container:
        container_name = f"handin-test-{name}-{uuid.uuid4().hex[:8]}"
        args = self.run_args(env or {}, volumes or [])
        result = podman("run", "--detach", "--name", container_name, *args, image(name), *command)
        container = Container(result.stdout.strip(), container_name)
        self.started.append(container)
        return container

    def run(
        self, name: str, *command: str, env: dict[str, str] | None = None, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Runs a command to its end in a fresh container of the image."""
        args = self.run_args(env or {}, [])
        return podman("run", "--rm", *args, image(name), *command, timeout=timeout, check=False)

    def remove_all(self) -> None:
        for container in self.started:
            podman("rm", "--force", "--time", "2", container.id, check=False)


@pytest.fixture
def containers(built_images: tuple[str, ...]) -> Iterator[Containers]:
    running = Containers()
    yield running
    running.remove_all()


@pytest.fixture
async def database_url() -> AsyncIterator[str]:
    """PostgreSQL only: the containers reach it over the host's network, as pods reach theirs."""
    from core.db import make_engine
    from core.models import Base

    name = await create_pg_database()
    url = pg_url(name)
    engine = make_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()
    yield url
    await drop_pg_database(name)


def wait_until_listening(container: Container, port: int, timeout: float = START_TIMEOUT) -> None:
    """Waits for the containerised server to accept connections, failing early if it exits."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            pass
        if not container.running():
            raise AssertionError(f"{container.name} exited before listening on {port}:\n{container.logs()}")
        time.sleep(0.1)
    raise AssertionError(f"{container.name} did not listen on {port} within {timeout:g} s:\n{container.logs()}")
