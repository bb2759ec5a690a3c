"""Driving a kind cluster from the end-to-end tests: kind, docker, helm, kubectl.

Everything here shells out to the real tools; nothing is faked. The image list
comes from skaffold.yaml, so the tests build exactly what `skaffold dev` builds.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "handin"
KIND_VALUES = CHART_DIR / "values-kind.yaml"
KIND_CONFIG = Path(__file__).parent / "kind-config.yaml"
IMAGE_TAG = "e2e"


def run(*args: str, timeout: float = 600, check: bool = True, input: str | None = None) -> str:
    result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stderr}\n{result.stdout}")
    return result.stdout


def missing_prerequisite() -> str | None:
    """Why the kind suite cannot run on this machine, or None when it can."""
    for tool in ("docker", "kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "the Docker engine does not answer"
    if info.returncode != 0:
        return "no Docker engine is running (`docker info` failed)"
    return None


@dataclass(frozen=True)
class Artifact:
    image: str
    dockerfile: str
    build_args: dict[str, str]


def skaffold_artifacts() -> list[Artifact]:
    config = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
    return [
        Artifact(item["image"], item["docker"]["dockerfile"], item["docker"].get("buildArgs", {}))
        for item in config["build"]["artifacts"]
    ]


class Cluster:
    """One kind cluster and the namespace the release lives in."""

    def __init__(self, name: str, namespace: str, helm: Path) -> None:
        self.name, self.namespace, self.helm = name, namespace, helm
        self.context = f"kind-{name}"

    def exists(self) -> bool:
        return self.name in run("kind", "get", "clusters").split()

    def create(self) -> None:
        run("kind", "create", "cluster", "--name", self.name, "--config", str(KIND_CONFIG), "--wait", "120s")

    def delete(self) -> None:
        run("kind", "delete", "cluster", "--name", self.name, check=False)

    def build_and_load_images(self) -> None:
        for artifact in skaffold_artifacts():
            reference = f"{artifact.image}:{IMAGE_TAG}"
            args = ["docker", "build", "-f", str(REPO_ROOT / artifact.dockerfile), "-t", reference]
            for name, value in artifact.build_args.items():
                args += ["--build-arg", f"{name}={value}"]
            run(*args, str(REPO_ROOT), timeout=1800)
            run("kind", "load", "docker-image", reference, "--name", self.name, timeout=600)

    # --- kubectl and helm -------------------------------------------------

    def kubectl(self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None) -> str:
        return run("kubectl", "--context", self.context, "-n", self.namespace, *args,
                   timeout=timeout, check=check, input=input)

    def get(self, kind: str, name: str = "", selector: str = "") -> Any:
        args = ["get", kind] + ([name] if name else []) + (["-l", selector] if selector else []) + ["-o", "json"]
        return json.loads(self.kubectl(*args))

    def helm_cmd(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        return run(str(self.helm), "--kube-context", self.context, "-n", self.namespace, *args,
                   timeout=timeout, check=check)

    def release_installed(self, release: str) -> bool:
        return release in self.helm_cmd("list", "-q", check=False).split()

    def install(self, release: str, *extra: str) -> None:
        self.helm_cmd(
            "upgrade", "--install", release, str(CHART_DIR), "--create-namespace",
            "-f", str(KIND_VALUES), "--set", f"image.tag={IMAGE_TAG}",
            "--wait", "--timeout", "15m", *extra,
        )

    def exec_python(self, deployment: str, code: str, timeout: float = 120) -> str:
        """Run Python inside a pod of a Deployment: its env holds the release's settings."""
        return self.kubectl("exec", f"deploy/{deployment}", "--", "python", "-c", code, timeout=timeout)

    def wait_for(self, predicate: Any, timeout: float, interval: float = 2.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
            time.sleep(interval)

    @contextmanager
    def port_forward(self, service: str, port: int) -> Iterator[int]:
        """`kubectl port-forward` to a local port the OS picks; yields that port."""
        process = subprocess.Popen(
            ["kubectl", "--context", self.context, "-n", self.namespace, "port-forward",
             f"svc/{service}", f":{port}", "--address", "127.0.0.1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            match = re.search(r"127\.0\.0\.1:(\d+)", line)
            if not match:
                errors = process.stderr.read() if process.stderr else ""
                raise RuntimeError(f"port-forward to {service} failed: {line}{errors}")
            yield int(match.group(1))
        finally:
            process.terminate()
            process.wait(timeout=10)
