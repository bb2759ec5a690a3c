"""Where decisions take effect: Kubernetes Deployments, or worker processes on this machine."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from kubernetes import client as k8s
from kubernetes import config as k8s_config

log = logging.getLogger(__name__)


class ScaleTarget(Protocol):
    async def current(self, task: str) -> int: ...

    async def apply(self, task: str, replicas: int) -> None: ...

    async def external(self, tasks: Sequence[str]) -> dict[str, str]:
        """Pools among `tasks` someone else scales, each with who: the autoscaler leaves them alone."""
        ...

    async def close(self) -> None: ...


def kubernetes_api_client() -> k8s.ApiClient:
    """In-cluster service account if running in a pod, else the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)
    # urllib3 would retry a timed-out GET three times: the per-call timeout must bound the call.
    configuration.retries = 0
    return k8s.ApiClient(configuration)


class KubernetesTarget:
    """Reads and PATCHes the apps/v1 Deployment scale subresource of each worker pool.

    The official client is synchronous; its calls run in a thread so the loop
    keeps serving /healthz and renewing the Lease. Every call gives up after
    `timeout`; a PATCH still in flight when the autoscaler stops is waited for
    (close), so the Lease is released only once this process can change nothing.
    Writes name `field_manager` (the autoscaler's identity), so the Deployment's
    managedFields say which autoscaler set its replicas.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        namespace: str,
        deployment_prefix: str,
        timeout: float = 5.0,
        field_manager: str = "handin-autoscaler",
    ) -> None:
        self.apps = k8s.AppsV1Api(api_client)
        self.hpas = k8s.AutoscalingV2Api(api_client)
        self.namespace = namespace
        self.deployment_prefix = deployment_prefix
        self.timeout = timeout
        self.field_manager = field_manager
        self._in_flight: set[asyncio.Future[object]] = set()

    def deployment(self, task: str) -> str:
        return f"{self.deployment_prefix}{task}"

    async def current(self, task: str) -> int:
        scale = await asyncio.to_thread(
            self.apps.read_namespaced_deployment_scale,
            self.deployment(task),
            self.namespace,
            _request_timeout=self.timeout,
        )
        return int(scale.spec.replicas or 0)

    async def apply(self, task: str, replicas: int) -> None:
        body = {"spec": {"replicas": replicas}}
        call = asyncio.ensure_future(
            asyncio.to_thread(
                self.apps.patch_namespaced_deployment_scale,
                self.deployment(task),
                self.namespace,
                body,
                field_manager=self.field_manager,
                _request_timeout=self.timeout,
            )
        )
        self._in_flight.add(call)
        call.add_done_callback(self._in_flight.discard)
        # Cancelling the caller does not stop the thread: close() waits for it.
        await asyncio.shield(call)
        log.info("deployment scaled", extra={"deployment": self.deployment(task), "replicas": replicas})

    async def external(self, tasks: Sequence[str]) -> dict[str, str]:
        """Pools whose Deployment an autoscaling/v2 HorizontalPodAutoscaler targets (KEDA makes one too)."""
        answer = await asyncio.to_thread(
            self.hpas.list_namespaced_horizontal_pod_autoscaler, self.namespace, _request_timeout=self.timeout
        )
        by_deployment = {self.deployment(task): task for task in tasks}
        owners: dict[str, str] = {}
        for hpa in answer.items:
            ref = hpa.spec.scale_target_ref
            if (
                ref.kind == "Deployment"
                and (ref.api_version or "apps/v1").startswith("apps/")
                and ref.name in by_deployment
            ):
                owners[by_deployment[ref.name]] = f"HorizontalPodAutoscaler/{hpa.metadata.name}"
        return owners

    async def close(self) -> None:
        if self._in_flight:
            await asyncio.wait(set(self._in_flight), timeout=self.timeout + 1)


def worker_command(task: str) -> list[str]:
    return [sys.executable, "-m", "core.cli", "worker", task]


class LocalTarget:
    """Supervises `handin worker <task>` processes on this machine.

    Scaling down sends SIGTERM: arq stops taking jobs and waits for the
    running ones (job_completion_wait) before exiting, so no job is cut off.
    A process that outlives `stop_timeout` is killed as a last resort; its
    job stays in the queue and arq retries it once the in-progress lock
    expires.
    """

    def __init__(
        self,
        env: Mapping[str, str] | None = None,
        command: Callable[[str], Sequence[str]] = worker_command,
        stop_timeout: float = 60.0,
        cwd: str | None = None,
    ) -> None:
        self.env = dict(os.environ if env is None else env)
        self.command = command
        self.stop_timeout = stop_timeout
        self.cwd = cwd
        self.running: dict[str, list[subprocess.Popen[bytes]]] = {}
        self.draining: list[subprocess.Popen[bytes]] = []

    def _reap(self, task: str) -> list[subprocess.Popen[bytes]]:
        alive = [p for p in self.running.get(task, []) if p.poll() is None]
        for process in self.running.get(task, []):
            if process.returncode is not None:
                log.warning("worker exited", extra={"task": task, "pid": process.pid, "code": process.returncode})
        self.running[task] = alive
        self.draining = [p for p in self.draining if p.poll() is None]
        return alive

    def pids(self, task: str) -> list[int]:
        return [p.pid for p in self._reap(task)]

    def draining_pids(self) -> list[int]:
        self.draining = [p for p in self.draining if p.poll() is None]
        return [p.pid for p in self.draining]

    async def current(self, task: str) -> int:
        return len(self._reap(task))

    async def external(self, tasks: Sequence[str]) -> dict[str, str]:
        return {}  # on one machine nothing else starts workers

    async def apply(self, task: str, replicas: int) -> None:
        alive = self._reap(task)
        while len(alive) < replicas:
            alive.append(self._spawn(task))
        while len(alive) > replicas:
            # Newest first: the oldest have warmed up and are most likely mid-job.
            process = alive.pop()
            process.send_signal(signal.SIGTERM)
            self.draining.append(process)
            log.info("worker draining", extra={"task": task, "pid": process.pid})
        self.running[task] = alive

    def _spawn(self, task: str) -> subprocess.Popen[bytes]:
        # Starting a process does not block on it; it runs beside the loop.
        process = subprocess.Popen(list(self.command(task)), env=self.env, cwd=self.cwd)
        log.info("worker started", extra={"task": task, "pid": process.pid})
        return process

    async def close(self) -> None:
        """Drain every worker this target started and wait for them to exit."""
        for task in list(self.running):
            await self.apply(task, 0)
        await self.wait_drained(self.stop_timeout)
        for process in self.draining:
            if process.poll() is None:
                log.warning("worker did not drain in time; killing", extra={"pid": process.pid})
                process.kill()
                process.wait()
        self.draining = []

    async def wait_drained(self, within: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while self.draining_pids():
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.1)
        return True
