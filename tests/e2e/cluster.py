"""Driving a kind cluster from the end-to-end tests: kind, docker, helm, kubectl.

Everything here shells out to the real tools; nothing is faked. The image list
comes from skaffold.yaml, so the tests build exactly what `skaffold dev` builds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.e2e.processes import PortForward

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_DIR = REPO_ROOT / "charts" / "handin"
KIND_VALUES = CHART_DIR / "values-kind.yaml"
KIND_CONFIG = Path(__file__).parent / "kind-config.yaml"
IMAGE_TAG = "e2e"
# Every command's output and every port-forward's chatter, for the CI artifact and for reading after a failure.
LOG_DIR = Path(os.environ.get("HANDIN_E2E_LOG_DIR", REPO_ROOT / ".tools" / "e2e-logs"))


def run(*args: str, timeout: float = 600, check: bool = True, input: str | None = None) -> str:
    """Run a command to its end (or `timeout`: then it is killed and TimeoutExpired raised), its output logged."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / "commands.log").open("a", encoding="utf-8") as log:
        log.write(f"$ {' '.join(args)}\n")
        try:
            result = subprocess.run(args, capture_output=True, text=True, timeout=timeout, input=input)
        except subprocess.TimeoutExpired as error:
            log.write(f"timed out after {timeout:g} s\n")
            raise RuntimeError(f"{' '.join(args)} did not finish within {timeout:g} s") from error
        log.write(f"{result.stdout}{result.stderr}(exit {result.returncode})\n")
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


# Runs in a pod of its own (not the release's, so no rollout touches it): one GET a tenth of a
# second through the Service, each on a new connection (a kept-alive one would pin one pod),
# until /tmp/stop appears; then one JSON line with what it saw.
SERVICE_PROBE = """
import json, os, pathlib, time, httpx
url, stop = os.environ["PROBE_URL"], pathlib.Path("/tmp/stop")
served, failures = 0, []
while not stop.exists():
    try:
        status = httpx.get(url, timeout=5, headers={"Connection": "close"}).status_code
        if status != 200:
            failures.append(str(status))
    except httpx.HTTPError as error:
        failures.append(repr(error))
    served += 1
    if served == 1:
        print("probing", flush=True)
    time.sleep(0.1)
print(json.dumps({"served": served, "failed": len(failures), "failures": failures[:20]}), flush=True)
"""


def probe_pod_manifest(name: str, url: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "handin-e2e-probe"}},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [
                {
                    "name": "probe",
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python", "-c", SERVICE_PROBE],
                    "env": [{"name": "PROBE_URL", "value": url}],
                    "securityContext": {
                        "allowPrivilegeEscalation": False,
                        "readOnlyRootFilesystem": True,
                        "capabilities": {"drop": ["ALL"]},
                    },
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {}}],
        },
    }


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
        return run(
            "kubectl", "--context", self.context, "-n", self.namespace, *args, timeout=timeout, check=check, input=input
        )

    def get(self, kind: str, name: str = "", selector: str = "") -> Any:
        args = ["get", kind] + ([name] if name else []) + (["-l", selector] if selector else []) + ["-o", "json"]
        return json.loads(self.kubectl(*args))

    def helm_cmd(self, *args: str, timeout: float = 900, check: bool = True) -> str:
        return run(
            str(self.helm), "--kube-context", self.context, "-n", self.namespace, *args, timeout=timeout, check=check
        )

    def release_installed(self, release: str) -> bool:
        return release in self.helm_cmd("list", "-q", check=False).split()

    def install(self, release: str, *extra: str) -> None:
        self.helm_cmd(
            "upgrade",
            "--install",
            release,
            str(CHART_DIR),
            "--create-namespace",
            "-f",
            str(KIND_VALUES),
            "--set",
            f"image.tag={IMAGE_TAG}",
            "--wait",
            "--timeout",
            "15m",
            *extra,
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
    def service_probe(self, url: str, image: str = f"handin-api:{IMAGE_TAG}") -> Iterator[dict[str, Any]]:
        """Probes `url` from inside the cluster while the block runs; the dict then holds
        `served`, `failed` and the first `failures`."""
        name = "handin-e2e-probe"
        self.kubectl("delete", "pod", name, "--ignore-not-found", "--wait=true")
        self.kubectl("apply", "-f", "-", input=json.dumps(probe_pod_manifest(name, url, image)))
        outcome: dict[str, Any] = {}
        try:
            self.wait_for(
                lambda: "probing" in self.kubectl("logs", name, check=False), timeout=120, what="the probe pod to start"
            )
            yield outcome
            self.kubectl("exec", name, "--", "python", "-c", "open('/tmp/stop', 'w').close()")
            self.wait_for(
                lambda: self.get("pod", name)["status"].get("phase") in ("Succeeded", "Failed"),
                timeout=60,
                what="the probe pod to finish",
            )
            outcome.update(json.loads(self.kubectl("logs", name).strip().splitlines()[-1]))
        finally:
            self.kubectl("delete", "pod", name, "--ignore-not-found", "--wait=false", check=False)

    @contextmanager
    def port_forward(self, service: str, port: int) -> Iterator[int]:
        """A local port forwarded to the Service, kept up across rollouts; yields that port.

        `kubectl port-forward svc/…` follows one pod and ends with it: `PortForward`
        starts it again on the same local port, its output drained to a log.
        """

        def command(local_port: int) -> list[str]:
            return [
                "kubectl", "--context", self.context, "-n", self.namespace, "port-forward",
                f"svc/{service}", f"{local_port}:{port}", "--address", "127.0.0.1",
            ]  # fmt: skip

        with PortForward(command, LOG_DIR / f"port-forward-{service}.log") as forward:
            yield forward.port
