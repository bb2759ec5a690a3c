"""The real `handin autoscaler` process on a real kube-apiserver, with the chart's own RBAC.

The chart is rendered with helm into a fresh namespace; its autoscaler
ServiceAccount, Role, RoleBinding (and Lease, if it renders one) and the
worker Deployments are created from those manifests. Each autoscaler runs as a
subprocess with a kubeconfig holding a real token of that ServiceAccount
(TokenRequest), the chart's HANDIN_AUTOSCALER__* settings, the suite's Redis
(database 7, flushed) and a database of its own. Nothing here is mocked: what
RBAC refuses, the process is refused.

Who changed a Deployment's replicas is read from the API server: every scale
write names the autoscaler's identity as field manager, and a watch records
the owner of `spec.replicas` after each change, in the server's order.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from kubernetes import client as k8s
from kubernetes import watch
from redis.asyncio import Redis

from core import keys
from core.db import make_engine
from core.models import Base
from core.queues import connect, enqueue_step
from tests.conftest import PG_ADMIN_DSN, TEST_REDIS_URL, create_pg_database, drop_pg_database, pg_url
from tests.fixtures import conditions
from tests.fixtures.envtest import ControlPlane
from tests.fixtures.helm import CHART_DIR, run_helm

REPO_ROOT = Path(__file__).resolve().parents[2]
HANDIN = REPO_ROOT / ".venv" / "bin" / "handin"
REDIS_URL = f"{TEST_REDIS_URL.rsplit('/', 1)[0]}/7"
RELEASE = "handin"
WAIT = 90.0  # seconds any condition below may take on a loaded machine before the test fails


async def until(check: Callable[[], Any], what: str, within: float = WAIT) -> Any:
    return await conditions.until(check, what, within, poll=0.1)


def micro(value: datetime | None) -> float:
    return value.timestamp() if value else 0.0


def replicas_owner(deployment: Any) -> str | None:
    """The field manager that last set spec.replicas."""
    for entry in deployment.metadata.managed_fields or []:
        if "f:replicas" in (entry.fields_v1 or {}).get("f:spec", {}):
            return str(entry.manager)
    return None


class ReplicaHistory:
    """Every change of a Deployment's spec.replicas in the namespace, with who made it, in the server's order."""

    def __init__(self, control_plane: ControlPlane, namespace: str) -> None:
        self.api = control_plane.client()
        self.apps = k8s.AppsV1Api(self.api)
        self.namespace = namespace
        self.changes: list[tuple[str, int, str | None]] = []
        self.error: BaseException | None = None
        self._last: dict[str, int] = {}
        self._stopped = threading.Event()
        listed = self.apps.list_namespaced_deployment(namespace)
        for item in listed.items:
            self._last[item.metadata.name] = item.spec.replicas
        self._thread = threading.Thread(target=self._run, args=(listed.metadata.resource_version,))
        self._thread.start()

    def _run(self, version: str) -> None:
        # Short server-side watches, resumed from the last version seen, so stop() returns soon.
        try:
            while not self._stopped.is_set():
                for event in watch.Watch().stream(
                    self.apps.list_namespaced_deployment, self.namespace, resource_version=version, timeout_seconds=2
                ):
                    item = event["object"]
                    name, replicas = item.metadata.name, item.spec.replicas
                    version = item.metadata.resource_version
                    if event["type"] == "MODIFIED" and self._last.get(name) != replicas:
                        self.changes.append((name, replicas, replicas_owner(item)))
                    self._last[name] = replicas
        except Exception as error:  # reported by writers() and stop()
            self.error = error

    def has_seen(self, name: str, replicas: int) -> bool:
        """Whether the watch has caught up with this value of the Deployment's replicas."""
        return self._last.get(name) == replicas

    def writers(self, name: str) -> list[str | None]:
        """Who set the Deployment's replicas, change by change."""
        if self.error is not None:
            raise AssertionError(f"the watch failed: {self.error!r}")
        return [owner for deployment, _, owner in list(self.changes) if deployment == name]

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=30)
        self.api.close()
        assert self.error is None, f"the watch failed: {self.error!r}"


@dataclass
class Release:
    """The chart's autoscaler objects and worker Deployments in a namespace of the test's own."""

    control_plane: ControlPlane
    namespace: str
    env: dict[str, str]  # the literal HANDIN_AUTOSCALER__* settings of the chart's autoscaler container
    service_account: str
    role: str
    lease: str
    workdir: Path
    admin: k8s.ApiClient = field(init=False)

    def __post_init__(self) -> None:
        self.admin = self.control_plane.client()

    def deployment(self, task: str) -> str:
        return f"{self.env['HANDIN_AUTOSCALER__DEPLOYMENT_PREFIX']}{task}"

    def replicas(self, task: str) -> int:
        scale = k8s.AppsV1Api(self.admin).read_namespaced_deployment_scale(self.deployment(task), self.namespace)
        return int(scale.spec.replicas)

    def lease_spec(self) -> Any:
        try:
            return k8s.CoordinationV1Api(self.admin).read_namespaced_lease(self.lease, self.namespace).spec
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise

    def holder(self) -> str | None:
        spec = self.lease_spec()
        return spec.holder_identity if spec else None

    def kubeconfig(self) -> Path:
        """A kubeconfig acting as the chart's autoscaler ServiceAccount."""
        token = self.control_plane.service_account_token(self.namespace, self.service_account)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "envtest",
                    "cluster": {
                        "server": self.control_plane.url,
                        "certificate-authority": str(self.control_plane.ca_file),
                    },
                }
            ],
            "users": [{"name": "autoscaler", "user": {"token": token}}],
            "contexts": [
                {
                    "name": "autoscaler",
                    "context": {"cluster": "envtest", "user": "autoscaler", "namespace": self.namespace},
                }
            ],
            "current-context": "autoscaler",
        }
        path = self.workdir / "kubeconfig"
        path.write_text(yaml.safe_dump(config))
        return path


def _create(api: k8s.ApiClient, namespace: str, manifest: dict[str, Any]) -> None:
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    kind = manifest["kind"]
    if kind == "ServiceAccount":
        k8s.CoreV1Api(api).create_namespaced_service_account(namespace, manifest)
    elif kind == "Role":
        k8s.RbacAuthorizationV1Api(api).create_namespaced_role(namespace, manifest)
    elif kind == "RoleBinding":
        k8s.RbacAuthorizationV1Api(api).create_namespaced_role_binding(namespace, manifest)
    elif kind == "Lease":
        k8s.CoordinationV1Api(api).create_namespaced_lease(namespace, manifest)
    elif kind == "Deployment":
        k8s.AppsV1Api(api).create_namespaced_deployment(namespace, manifest)
    else:
        raise AssertionError(f"no way to create a {kind}")


@pytest.fixture
def release(control_plane: ControlPlane, namespace: str, helm_binary: Path, tmp_path: Path) -> Iterator[Release]:
    rendered = run_helm(helm_binary, "template", RELEASE, str(CHART_DIR), "--namespace", namespace, "--skip-tests")
    manifests = [doc for doc in yaml.safe_load_all(rendered) if doc]

    def component(doc: dict[str, Any]) -> str:
        return str(doc["metadata"].get("labels", {}).get("app.kubernetes.io/component", ""))

    scaler = next(d for d in manifests if d["kind"] == "Deployment" and component(d) == "autoscaler")
    pod = scaler["spec"]["template"]["spec"]
    container = next(c for c in pod["containers"] if c["name"] == "autoscaler")
    env = {
        item["name"]: str(item["value"])
        for item in container.get("env", [])
        if item["name"].startswith("HANDIN_AUTOSCALER__") and "value" in item
    }
    role = next(d for d in manifests if d["kind"] == "Role" and component(d) == "autoscaler")
    wanted = [
        d
        for d in manifests
        if (d["kind"] in ("ServiceAccount", "Role", "RoleBinding", "Lease") and component(d) == "autoscaler")
        or (d["kind"] == "Deployment" and component(d).startswith("worker-"))
    ]
    with control_plane.client() as api:
        for manifest in wanted:
            _create(api, namespace, manifest)
    made = Release(
        control_plane=control_plane,
        namespace=namespace,
        env=env,
        service_account=pod["serviceAccountName"],
        role=role["metadata"]["name"],
        lease=env["HANDIN_AUTOSCALER__LEASE_NAME"],
        workdir=tmp_path,
    )
    yield made
    k8s.CoreV1Api(made.admin).delete_namespace(namespace)
    made.admin.close()


@pytest.fixture
def history(release: Release) -> Iterator[ReplicaHistory]:
    watcher = ReplicaHistory(release.control_plane, release.namespace)
    yield watcher
    watcher.stop()


@pytest.fixture
async def queues() -> AsyncIterator[Redis]:
    """The autoscalers' Redis (a database of their own), empty before and after."""
    client: Redis = Redis.from_url(REDIS_URL)
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


async def flood(task: str, count: int, start: int = 1) -> None:
    """Real arq jobs on a pool's queue, as the pipeline enqueues them."""
    arq = await connect(REDIS_URL)
    try:
        for submission_id in range(start, start + count):
            await enqueue_step(arq, task, submission_id)
    finally:
        await arq.aclose()


async def sqlite_database(path: Path) -> str:
    url = f"sqlite+aiosqlite:///{path}"
    engine = make_engine(url)
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()
    return url


class Process:
    """One `handin autoscaler` subprocess; its JSON log lines are read back from a file."""

    def __init__(self, identity: str, env: dict[str, str], log_path: Path) -> None:
        self.identity = identity
        self.log_path = log_path
        with log_path.open("wb") as out:
            self.popen = subprocess.Popen(
                [str(HANDIN), "autoscaler"], env=env, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT
            )

    def logs(self, message: str | None = None) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and (message is None or entry.get("msg") == message):
                entries.append(entry)
        return entries

    def decisions(self, pool: str) -> list[dict[str, Any]]:
        return [e for e in self.logs("autoscaler decision") if e["decision"]["pool"] == pool]

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(timeout=30)


@pytest.fixture
def autoscalers(release: Release, queues: Redis) -> Iterator[Callable[..., Process]]:
    """Start `handin autoscaler` processes as the chart's ServiceAccount; all are stopped afterwards."""
    kubeconfig = release.kubeconfig()
    started: list[Process] = []

    def start(identity: str, database_url: str, **settings: str) -> Process:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HANDIN_", "KUBERNETES_"))}
        env.update(release.env)
        env.update(
            {
                "KUBECONFIG": str(kubeconfig),
                "HANDIN_REDIS_URL": REDIS_URL,
                "HANDIN_DATABASE_URL": database_url,
                "HANDIN_LOG_JSON": "true",
                "HANDIN_AUTOSCALER__NAMESPACE": release.namespace,
                "HANDIN_AUTOSCALER__IDENTITY": identity,
                "HANDIN_AUTOSCALER__HTTP_PORT": "0",
                "HANDIN_AUTOSCALER__INTERVAL_SECONDS": "0.5",
                # 100 scan jobs at the io default of 20 jobs/s per replica, cleared within 1 s: 5 replicas.
                "HANDIN_AUTOSCALER__POOLS__SCAN__TARGET_WAIT_SECONDS": "1",
                "HANDIN_AUTOSCALER__POOLS__STORE__TARGET_WAIT_SECONDS": "1",
            }
        )
        env.update({f"HANDIN_AUTOSCALER__{name.upper()}": value for name, value in settings.items()})
        process = Process(identity, env, release.workdir / f"{identity}.log")
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


async def scaled(release: Release, history: ReplicaHistory, task: str, wanted: Callable[[int], bool], what: str) -> int:
    """Wait until the pool's replicas are as wanted on the server and the watch has seen that change.

    A read of the Deployment can be ahead of the watch's stream, so checks of who made a change wait for both.
    """

    def reached() -> int | None:
        replicas = release.replicas(task)
        return replicas if wanted(replicas) and history.has_seen(release.deployment(task), replicas) else None

    return int(await until(reached, what))


def short_lease(duration: float = 4, timeout: float = 1) -> dict[str, str]:
    return {"lease_duration_seconds": str(duration), "kubernetes_timeout_seconds": str(timeout)}


async def test_queue_depth_scales_a_worker_deployment_with_the_charts_rights(
    release: Release, history: ReplicaHistory, autoscalers: Callable[..., Process], tmp_path: Path
) -> None:
    scaler = autoscalers("autoscaler-a", await sqlite_database(tmp_path / "a.db"), **short_lease())
    await until(lambda: release.holder() == "autoscaler-a", "the only autoscaler to take the Lease")
    assert release.replicas("scan") == 1

    await flood("scan", 100)

    await scaled(release, history, "scan", lambda n: n > 1, "scan to be scaled up")
    assert 1 < release.replicas("scan") <= int(release.env["HANDIN_AUTOSCALER__POOLS__SCAN__MAX_REPLICAS"])
    assert set(history.writers(release.deployment("scan"))) == {"autoscaler-a"}
    assert not scaler.logs("lease renewal failed") and not scaler.logs("pool cycle failed")


async def test_two_autoscalers_one_leads_and_a_killed_leader_is_replaced(
    release: Release, history: ReplicaHistory, autoscalers: Callable[..., Process], tmp_path: Path
) -> None:
    duration = 4.0
    first = autoscalers("autoscaler-a", await sqlite_database(tmp_path / "a.db"), **short_lease(duration))
    await until(lambda: release.holder() == "autoscaler-a", "the first autoscaler to lead")
    second = autoscalers("autoscaler-b", await sqlite_database(tmp_path / "b.db"), **short_lease(duration))
    await until(lambda: second.logs("standing by; another autoscaler leads"), "the second to stand by")

    await flood("scan", 100)
    await scaled(release, history, "scan", lambda n: n > 1, "the leader to scale scan up")
    assert release.holder() == "autoscaler-a"
    assert {owner for _, _, owner in history.changes} == {"autoscaler-a"}  # the standby changed nothing
    assert history.error is None

    last_renewal = micro(release.lease_spec().renew_time)
    first.signal(signal.SIGKILL)
    spec = await until(
        lambda: (s := release.lease_spec()) is not None and s.holder_identity == "autoscaler-b" and s,
        "the standby to take over",
    )
    # Not before the killed leader's lease expired.
    assert (
        micro(spec.acquire_time) >= micro(spec.renew_time) - 1 and micro(spec.acquire_time) >= last_renewal + duration
    )
    assert spec.lease_transitions >= 1

    await flood("store", 100)
    await scaled(release, history, "store", lambda n: n > 1, "the new leader to scale store up")
    assert history.writers(release.deployment("store"))[-1] == "autoscaler-b"


async def test_sigterm_releases_the_lease_at_once(
    release: Release, autoscalers: Callable[..., Process], tmp_path: Path
) -> None:
    duration = 60.0  # a standby that had to wait for expiry would take a minute
    first = autoscalers("autoscaler-a", await sqlite_database(tmp_path / "a.db"), **short_lease(duration, 2))
    await until(lambda: release.holder() == "autoscaler-a", "the first autoscaler to lead")
    second = autoscalers("autoscaler-b", await sqlite_database(tmp_path / "b.db"), **short_lease(duration, 2))
    await until(lambda: second.logs("standing by; another autoscaler leads"), "the second to stand by")
    last_renewal = micro(release.lease_spec().renew_time)

    first.signal(signal.SIGTERM)

    await until(lambda: first.popen.poll() is not None, "the leader to exit")
    assert first.popen.returncode == 0
    assert first.logs("lease released")
    spec = await until(
        lambda: (s := release.lease_spec()) is not None and s.holder_identity == "autoscaler-b" and s,
        "the standby to take over",
    )
    assert micro(spec.acquire_time) < last_renewal + duration


async def test_a_leader_that_cannot_renew_stops_patching_before_a_standby_takes_over(
    release: Release, history: ReplicaHistory, autoscalers: Callable[..., Process], queues: Redis, tmp_path: Path
) -> None:
    """The leader's cycle hangs on its database after renewing; the standby takes over; then it wakes up."""
    database = await create_pg_database()
    engine = make_engine(pg_url(database))
    async with engine.begin() as connection:
        await connection.run_sync(Base.metadata.create_all)
    await engine.dispose()
    lock = await asyncpg.connect(f"{PG_ADMIN_DSN.rsplit('/', 1)[0]}/{database}")
    quick = {**short_lease(4, 1), "scale_down_window_seconds": "0"}
    try:
        first = autoscalers("autoscaler-a", pg_url(database), **quick)
        await until(lambda: release.holder() == "autoscaler-a", "the first autoscaler to lead")
        second = autoscalers("autoscaler-b", await sqlite_database(tmp_path / "b.db"), **quick)
        await until(lambda: second.logs("standing by; another autoscaler leads"), "the second to stand by")
        await flood("scan", 100)
        await until(lambda: release.replicas("scan") > 1, "the leader to scale scan up")

        # The leader's next cycle renews, reads 100 jobs, then waits on the forecast's table.
        transaction = lock.transaction()
        await transaction.start()
        await lock.execute("LOCK TABLE assignments IN ACCESS EXCLUSIVE MODE")
        await until(
            lambda: lock.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND wait_event_type = 'Lock'", database
            ),
            "the leader's cycle to hang on the locked table",
        )
        # The work is gone; the standby, once it leads, scales scan back down.
        await queues.delete(keys.queue_name("scan"))
        await until(lambda: release.holder() == "autoscaler-b", "the standby to take over")
        await scaled(release, history, "scan", lambda n: n == 1, "the new leader to scale scan down")
        seen = len(first.decisions("scan"))

        await transaction.rollback()  # the old leader's cycle goes on with what it read before

        await until(lambda: len(first.decisions("scan")) > seen, "the old leader to finish its cycle")
        stale = first.decisions("scan")[-1]
        # It still wants the scale-up it read before the hang (its learned rates may size it differently)...
        assert stale["decision"]["desired"] > 1 and stale["applied"] is False
        assert first.logs("not applying: this autoscaler may no longer lead")
        writers = history.writers(release.deployment("scan"))
        assert "autoscaler-b" in writers
        assert "autoscaler-a" not in writers[writers.index("autoscaler-b") :]
        assert release.replicas("scan") == 1
    finally:
        await lock.close()
        await drop_pg_database(database)


async def test_a_leader_whose_lease_rights_are_revoked_says_so_and_stops_acting(
    release: Release, history: ReplicaHistory, autoscalers: Callable[..., Process], tmp_path: Path
) -> None:
    scaler = autoscalers("autoscaler-a", await sqlite_database(tmp_path / "a.db"), **short_lease(4, 1))
    await until(lambda: release.holder() == "autoscaler-a", "the autoscaler to lead")
    rbac = k8s.RbacAuthorizationV1Api(release.admin)
    role = rbac.read_namespaced_role(release.role, release.namespace)
    role.rules = [rule for rule in role.rules if "leases" not in rule.resources]
    rbac.replace_namespaced_role(release.role, release.namespace, role)

    failures = await until(lambda: scaler.logs("lease renewal failed"), "the refused renewal to be logged")
    assert failures[0]["status"] == 403
    await until(lambda: scaler.logs("no longer leading"), "the autoscaler to stop leading")
    await flood("scan", 100)
    seen = len(scaler.logs("lease acquisition failed"))
    await until(lambda: len(scaler.logs("lease acquisition failed")) >= seen + 3, "three more standby cycles")
    assert release.replicas("scan") == 1
    assert history.writers(release.deployment("scan")) == []


async def test_a_deployment_an_hpa_targets_is_left_alone_and_the_log_says_why(
    release: Release, history: ReplicaHistory, autoscalers: Callable[..., Process], tmp_path: Path
) -> None:
    hpas = k8s.AutoscalingV2Api(release.admin)
    hpa = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "scan-by-cpu"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": release.deployment("scan")},
            "minReplicas": 1,
            "maxReplicas": 3,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
                }
            ],
        },
    }
    hpas.create_namespaced_horizontal_pod_autoscaler(release.namespace, hpa)
    scaler = autoscalers("autoscaler-a", await sqlite_database(tmp_path / "a.db"), **short_lease())
    await until(lambda: release.holder() == "autoscaler-a", "the autoscaler to lead")

    await flood("scan", 100)
    await flood("store", 100)
    await until(lambda: release.replicas("store") > 1, "store (no HPA) to be scaled up")
    seen = len(scaler.decisions("store"))
    await until(lambda: len(scaler.decisions("store")) >= seen + 3, "three more cycles")

    assert release.replicas("scan") == 1
    assert history.writers(release.deployment("scan")) == []
    refusals = scaler.logs("pool left alone: its Deployment is scaled by another autoscaler")
    assert [(r["pool"], r["owner"]) for r in refusals] == [("scan", "HorizontalPodAutoscaler/scan-by-cpu")]

    hpas.delete_namespaced_horizontal_pod_autoscaler("scan-by-cpu", release.namespace)
    await until(lambda: release.replicas("scan") > 1, "scan to be scaled once the HPA is gone")
    assert scaler.logs("pool scaled by this autoscaler again")
