"""What the chart renders, read as objects: the promises of docs/deploying.md."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from core.settings import Settings
from tests.fixtures.helm import ALL_VALUES_FILES, CHART_DIR, HelmError, Manifest, Renderer

BUNDLED = CHART_DIR / "ci" / "all-bundled-values.yaml"
EXTERNAL = CHART_DIR / "ci" / "all-external-values.yaml"
AUTOSCALER_OFF = CHART_DIR / "ci" / "autoscaler-off-values.yaml"
DEFAULTS: tuple[Path, ...] = ()
VALUES = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}
AUTOSCALED = {task for task, worker in VALUES["workers"].items() if worker["scaling"] == "autoscaler"}


def of_kind(manifests: list[Manifest], kind: str) -> dict[str, Manifest]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    return manifest["spec"] if manifest["kind"] == "Pod" else manifest["spec"]["template"]["spec"]


def containers(manifest: Manifest) -> list[dict[str, Any]]:
    spec = pod_spec(manifest)
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container.get("env", [])}


def worker_deployments(manifests: list[Manifest]) -> dict[str, Manifest]:
    return {
        m["metadata"]["labels"]["handin.io/task"]: m
        for m in of_kind(manifests, "Deployment").values()
        if "handin.io/task" in m["metadata"]["labels"]
    }


def test_one_deployment_per_worker_with_its_profile_and_its_own_image(render_chart: Renderer):
    workers = worker_deployments(render_chart(*DEFAULTS))
    assert set(workers) == set(VALUES["workers"])
    images = set()
    for task, deployment in workers.items():
        profile = VALUES["profiles"][VALUES["workers"][task]["profile"]]
        [container] = pod_spec(deployment)["containers"]
        assert deployment["metadata"]["name"] == f"handin-worker-{task}"
        assert container["command"] == ["handin", "worker", task]
        assert container["image"] == f"handin-worker-{task}:0.1.0"
        assert container["resources"] == profile["resources"]
        env = env_of(container)
        assert env["HANDIN_WORKER__MAX_JOBS"] == str(profile["maxJobs"])
        images.add(container["image"])
    assert len(images) == len(workers)


@pytest.mark.parametrize("values_file", [*DEFAULTS, *ALL_VALUES_FILES], ids=lambda path: path.name)
def test_a_stopping_worker_waits_out_its_longest_job(render_chart: Renderer, values_file: Path):
    """arq's completion wait covers each pool's time limit, and the kubelet's grace covers that wait."""
    workers = worker_deployments(render_chart(values_file))
    for task, deployment in workers.items():
        limit = VALUES["workers"][task]["timeLimitSeconds"]
        [container] = pod_spec(deployment)["containers"]
        wait = float(env_of(container)["HANDIN_WORKER__JOB_COMPLETION_WAIT_SECONDS"])
        assert wait >= limit, task
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > wait, task
    similarity = pod_spec(workers["similarity"])
    assert similarity["terminationGracePeriodSeconds"] > 300
    assert pod_spec(workers["maintenance"])["terminationGracePeriodSeconds"] > 300
    changed = worker_deployments(render_chart(set_values={"workers.similarity.timeLimitSeconds": "900"}))
    [container] = pod_spec(changed["similarity"])["containers"]
    assert float(env_of(container)["HANDIN_WORKER__JOB_COMPLETION_WAIT_SECONDS"]) >= 900


def test_the_worker_liveness_probe_asks_the_workers_health_endpoint(render_chart: Renderer):
    for task, deployment in worker_deployments(render_chart()).items():
        [container] = pod_spec(deployment)["containers"]
        probe = container["livenessProbe"]["httpGet"]
        assert probe == {"path": "/healthz", "port": "metrics"}, task
        assert container["ports"] == [{"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]


def test_cpu_and_io_pools_get_different_sizes(render_chart: Renderer):
    workers = worker_deployments(render_chart(*DEFAULTS))
    cpu = pod_spec(workers["thumbnail"])["containers"][0]
    io = pod_spec(workers["receipt"])["containers"][0]
    assert cpu["resources"] != io["resources"]
    assert int(env_of(cpu)["HANDIN_WORKER__MAX_JOBS"]) < int(env_of(io)["HANDIN_WORKER__MAX_JOBS"])


def test_per_worker_overrides_beat_the_profile(render_chart: Renderer):
    workers = worker_deployments(
        render_chart(set_values={"workers.similarity.maxJobs": "7", "workers.similarity.resources.limits.cpu": "3"})
    )
    container = pod_spec(workers["similarity"])["containers"][0]
    assert env_of(container)["HANDIN_WORKER__MAX_JOBS"] == "7"
    assert container["resources"] == {"limits": {"cpu": 3}}


def test_autoscaled_pools_have_no_replicas_so_upgrades_do_not_fight_the_autoscaler(render_chart: Renderer):
    workers = worker_deployments(render_chart(*DEFAULTS))
    for task, deployment in workers.items():
        if task in AUTOSCALED:
            assert "replicas" not in deployment["spec"], task
        else:
            assert deployment["spec"]["replicas"] == VALUES["workers"][task]["replicas"], task
    assert "replicas" in workers["maintenance"]["spec"]


def test_an_externally_scaled_pool_keeps_its_replicas_across_upgrades_and_out_of_the_autoscalers_hands(
    render_chart: Renderer,
):
    manifests = render_chart(set_values={"workers.thumbnail.scaling": "external"})
    workers = worker_deployments(manifests)
    # No replicas: `helm upgrade` leaves what an HPA or KEDA chose.
    assert "replicas" not in workers["thumbnail"]["spec"]
    assert workers["thumbnail"]["metadata"]["labels"]["handin.io/scaling"] == "external"
    [role] = of_kind(manifests, "Role").values()
    named = {name for rule in role["rules"] for name in rule.get("resourceNames", [])}
    assert "handin-worker-thumbnail" not in named and "handin-worker-scan" in named
    [container] = pod_spec(of_kind(manifests, "Deployment")["handin-autoscaler"])["containers"]
    assert not [name for name in env_of(container) if name.startswith("HANDIN_AUTOSCALER__POOLS__THUMBNAIL__")]
    assert json.loads(env_of(container)["HANDIN_AUTOSCALER__TASKS"]) == sorted(AUTOSCALED - {"thumbnail"})
    # Also with the autoscaler off: external stays external, the others get replicas.
    off = worker_deployments(render_chart(AUTOSCALER_OFF, set_values={"workers.thumbnail.scaling": "external"}))
    assert "replicas" not in off["thumbnail"]["spec"] and off["scan"]["spec"]["replicas"] == 2


def test_the_older_autoscale_switch_still_means_fixed_or_autoscaled(render_chart: Renderer):
    workers = worker_deployments(
        render_chart(set_values={"workers.scan.scaling": "null", "workers.scan.autoscale": "false"})
    )
    assert workers["scan"]["spec"]["replicas"] == 1


def test_without_the_autoscaler_every_pool_has_its_replicas(render_chart: Renderer):
    manifests = render_chart(AUTOSCALER_OFF)
    workers = worker_deployments(manifests)
    assert workers["scan"]["spec"]["replicas"] == 2
    assert workers["similarity"]["spec"]["replicas"] == 3
    assert all("replicas" in deployment["spec"] for deployment in workers.values())
    assert not [m for m in manifests if m["metadata"]["labels"]["app.kubernetes.io/component"] == "autoscaler"]


def test_the_autoscaler_gets_each_pools_bounds_and_the_deployment_prefix(render_chart: Renderer):
    manifests = render_chart(*DEFAULTS)
    [container] = pod_spec(of_kind(manifests, "Deployment")["handin-autoscaler"])["containers"]
    env = env_of(container)
    assert env["HANDIN_AUTOSCALER__BACKEND"] == "kubernetes"
    assert env["HANDIN_AUTOSCALER__NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    prefix = env["HANDIN_AUTOSCALER__DEPLOYMENT_PREFIX"]
    for task, worker in VALUES["workers"].items():
        key = task.upper()
        if task in AUTOSCALED:
            assert env[f"HANDIN_AUTOSCALER__POOLS__{key}__MIN_REPLICAS"] == str(worker["minReplicas"])
            assert env[f"HANDIN_AUTOSCALER__POOLS__{key}__MAX_REPLICAS"] == str(worker["maxReplicas"])
            assert f"{prefix}{task}" in of_kind(manifests, "Deployment")
        else:
            assert f"HANDIN_AUTOSCALER__POOLS__{key}__MAX_REPLICAS" not in env
    changed = render_chart(set_values={"workers.scan.maxReplicas": "40"})
    [container] = pod_spec(of_kind(changed, "Deployment")["handin-autoscaler"])["containers"]
    assert env_of(container)["HANDIN_AUTOSCALER__POOLS__SCAN__MAX_REPLICAS"] == "40"


@pytest.mark.parametrize("values_file", [BUNDLED, EXTERNAL], ids=lambda path: path.name)
def test_rbac_grants_nothing_beyond_scaling_its_own_workers_and_its_lease(render_chart: Renderer, values_file: Path):
    manifests = render_chart(values_file)
    assert not of_kind(manifests, "ClusterRole") and not of_kind(manifests, "ClusterRoleBinding")
    [role] = of_kind(manifests, "Role").values()
    autoscaled = {f"handin-worker-{task}" for task in AUTOSCALED}
    granted = set()
    for rule in role["rules"]:
        names = tuple(sorted(rule.get("resourceNames", ["*"])))
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    granted.add((group, resource, verb, names))
    assert granted == {
        ("apps", "deployments/scale", "get", tuple(sorted(autoscaled))),
        ("apps", "deployments/scale", "patch", tuple(sorted(autoscaled))),
        # leader.py renews and releases with PATCH; only `create` cannot name its object.
        ("coordination.k8s.io", "leases", "get", ("handin-autoscaler",)),
        ("coordination.k8s.io", "leases", "update", ("handin-autoscaler",)),
        ("coordination.k8s.io", "leases", "patch", ("handin-autoscaler",)),
        ("coordination.k8s.io", "leases", "create", ("*",)),
        # To refuse scaling a Deployment that a HorizontalPodAutoscaler targets.
        ("autoscaling", "horizontalpodautoscalers", "get", ("*",)),
        ("autoscaling", "horizontalpodautoscalers", "list", ("*",)),
    }
    [binding] = of_kind(manifests, "RoleBinding").values()
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "handin-autoscaler", "namespace": "handin"}]
    # Only the autoscaler's pods carry a Kubernetes API token.
    with_token = [
        m["metadata"]["name"]
        for m in manifests
        if m["kind"] in WORKLOAD_KINDS and pod_spec(m).get("automountServiceAccountToken") is not False
    ]
    assert with_token == ["handin-autoscaler"]
    assert pod_spec(of_kind(manifests, "Deployment")["handin-autoscaler"])["serviceAccountName"] == "handin-autoscaler"


@pytest.mark.parametrize("values_file", ALL_VALUES_FILES, ids=lambda path: path.name)
def test_every_container_has_probes_resources_and_a_locked_down_security_context(
    render_chart: Renderer, values_file: Path
):
    for manifest in render_chart(values_file):
        if manifest["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(manifest)
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, manifest["metadata"]["name"]
        assert pod_security.get("seccompProfile") == {"type": "RuntimeDefault"}
        for container in containers(manifest):
            where = f"{manifest['kind']}/{manifest['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            assert resources.get("requests") and resources.get("limits"), where
            security = container.get("securityContext", {})
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities") == {"drop": ["ALL"]}, where
            assert security.get("privileged") is not True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            # Long-running containers are probed (those that serve also for readiness);
            # one-shot Jobs, init containers and test pods are not.
            if manifest["kind"] in {"Deployment", "StatefulSet"} and container in spec["containers"]:
                assert "livenessProbe" in container, where
                assert "readinessProbe" in container or not container.get("ports"), where


def test_api_and_router_have_services_probes_and_disruption_budgets(render_chart: Renderer):
    manifests = render_chart(*DEFAULTS)
    services = of_kind(manifests, "Service")
    budgets = of_kind(manifests, "PodDisruptionBudget")
    deployments = of_kind(manifests, "Deployment")
    for component, ready in (("api", "/readyz"), ("router", "/healthz")):
        name = f"handin-{component}"
        [container] = pod_spec(deployments[name])["containers"]
        assert container["readinessProbe"]["httpGet"]["path"] == ready
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert services[name]["spec"]["selector"]["app.kubernetes.io/component"] == component
        assert budgets[name]["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == component
        # Rolling upgrades never drop below the asked-for ready pods.
        assert deployments[name]["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod_spec(deployments["handin-api"])["containers"][0]["command"][:2] == ["handin", "api"]


def test_the_ingress_sends_ws_to_the_router_with_long_timeouts(render_chart: Renderer):
    [ingress] = of_kind(render_chart(BUNDLED), "Ingress").values()
    [rule] = ingress["spec"]["rules"]
    routes = {path["path"]: path["backend"]["service"]["name"] for path in rule["http"]["paths"]}
    assert routes == {"/ws": "handin-router", "/": "handin-api"}
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    config = of_kind(render_chart(BUNDLED), "ConfigMap")["handin-config"]["data"]
    assert config["HANDIN_PUBLIC_URL"] == "https://handin.test"
    assert config["HANDIN_ROUTER_URL"] == "wss://handin.test/ws"


def test_migrations_run_before_install_against_an_external_database_and_after_for_a_bundled_one(
    render_chart: Renderer,
):
    external = of_kind(render_chart(EXTERNAL), "Job")["handin-migrate"]
    bundled = of_kind(render_chart(BUNDLED), "Job")["handin-migrate"]
    assert external["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert bundled["metadata"]["annotations"]["helm.sh/hook"] == "post-install,pre-upgrade"
    [container] = pod_spec(external)["containers"]
    assert container["command"] == ["handin", "migrate"]
    # Before install only pre-existing Secrets can be read.
    assert env_of(container)["HANDIN_DATABASE_URL"] == {"secretKeyRef": {"name": "handin-database", "key": "url"}}
    assert "envFrom" not in container


@pytest.mark.parametrize("values_file", [EXTERNAL, BUNDLED], ids=lambda path: path.name)
def test_the_migrate_job_runs_as_a_service_account_created_before_it(render_chart: Renderer, values_file: Path):
    """A pre-install hook cannot use the release's ServiceAccount: it does not exist yet."""
    manifests = render_chart(values_file)
    job = of_kind(manifests, "Job")["handin-migrate"]
    account = of_kind(manifests, "ServiceAccount")[pod_spec(job)["serviceAccountName"]]
    job_hooks, account_hooks = job["metadata"]["annotations"], account["metadata"]["annotations"]
    assert account_hooks["helm.sh/hook"] == job_hooks["helm.sh/hook"]
    assert int(account_hooks["helm.sh/hook-weight"]) < int(job_hooks["helm.sh/hook-weight"])
    assert "hook-succeeded" in account_hooks["helm.sh/hook-delete-policy"]
    assert account["automountServiceAccountToken"] is False
    # Without serviceAccount.create, the one you named (it exists before install).
    own = render_chart(values_file, set_values={"serviceAccount.create": "false", "serviceAccount.name": "mine"})
    assert pod_spec(of_kind(own, "Job")["handin-migrate"])["serviceAccountName"] == "mine"
    assert not of_kind(own, "ServiceAccount").keys() - {"handin-autoscaler"}


def test_production_values_bundle_nothing(render_chart: Renderer):
    manifests = render_chart(CHART_DIR / "values-production.yaml")
    components = {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in manifests}
    assert not components & {"postgresql", "redis", "minio", "clamav", "demo"}
    config = of_kind(manifests, "ConfigMap")["handin-config"]["data"]
    assert config["HANDIN_ENVIRONMENT"] == "production"
    assert config["HANDIN_SCANNER__CLAMD_HOST"] == "clamd.security.svc.cluster.local"


def test_bundled_services_come_up_with_redis_persisting_its_queues(render_chart: Renderer):
    manifests = render_chart(BUNDLED)
    stateful = of_kind(manifests, "StatefulSet")
    assert set(stateful) == {"handin-postgresql", "handin-redis", "handin-minio"}
    assert "handin-clamav" in of_kind(manifests, "Deployment")
    redis_conf = of_kind(manifests, "ConfigMap")["handin-redis"]["data"]["redis.conf"].splitlines()
    assert "appendonly yes" in redis_conf
    config = of_kind(manifests, "ConfigMap")["handin-config"]["data"]
    assert config["HANDIN_STORAGE__S3_ENDPOINT_URL"] == "http://handin-minio:9000"
    assert config["HANDIN_SCANNER__CLAMD_HOST"] == "handin-clamav"
    assert {"handin-seed-demo", "handin-minio-bucket"} <= set(of_kind(manifests, "Job"))
    assert {"handin-postgresql", "handin-redis", "handin-minio", "handin-clamav"} <= set(
        of_kind(manifests, "NetworkPolicy")
    )


def test_bundled_data_lives_on_claims_the_release_does_not_own(render_chart: Renderer):
    """volumeClaimTemplates: `helm uninstall` deletes the StatefulSet, never the PVC with the data."""
    manifests = render_chart(BUNDLED)
    assert not of_kind(manifests, "PersistentVolumeClaim")
    for name, statefulset in of_kind(manifests, "StatefulSet").items():
        [claim] = statefulset["spec"]["volumeClaimTemplates"]
        assert claim["metadata"]["name"] == "data", name
        assert statefulset["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
        assert "data" not in {volume["name"] for volume in pod_spec(statefulset).get("volumes", [])}, name
    # Without persistence: an emptyDir and no claim.
    for statefulset in of_kind(render_chart(CHART_DIR / "ci" / "minimal-values.yaml"), "StatefulSet").values():
        assert "volumeClaimTemplates" not in statefulset["spec"]
        assert {"name": "data", "emptyDir": {}} in pod_spec(statefulset)["volumes"]


def secret_refs(manifest: Manifest) -> set[str]:
    return {
        item["valueFrom"]["secretKeyRef"]["name"]
        for container in containers(manifest)
        for item in container.get("env", [])
        if "secretKeyRef" in item.get("valueFrom", {})
    }


def test_bundled_services_take_their_passwords_from_existing_secrets(render_chart: Renderer):
    values = {"postgresql.existingSecret": "pg", "redis.existingSecret": "rd", "minio.existingSecret": "s3"}
    manifests = render_chart(BUNDLED, set_values=values)
    # The chart generates none of them, so `helm template` (GitOps) renders the same every time.
    assert not {"handin-postgresql", "handin-redis", "handin-minio"} & set(of_kind(manifests, "Secret"))
    stateful = of_kind(manifests, "StatefulSet")
    assert secret_refs(stateful["handin-postgresql"]) == {"pg"}
    assert secret_refs(stateful["handin-redis"]) == {"rd"}
    assert secret_refs(stateful["handin-minio"]) == {"s3"}
    assert secret_refs(of_kind(manifests, "Job")["handin-minio-bucket"]) == {"s3"}
    [api] = pod_spec(of_kind(manifests, "Deployment")["handin-api"])["containers"]
    env = env_of(api)
    # The database URL carries no password (asyncpg reads PGPASSWORD); Redis's is composed by the kubelet.
    assert env["PGPASSWORD"] == {"secretKeyRef": {"name": "pg", "key": "password"}}
    assert env["HANDIN_DATABASE_URL"] == "postgresql+asyncpg://handin@handin-postgresql:5432/handin"
    assert env["REDIS_PASSWORD"] == {"secretKeyRef": {"name": "rd", "key": "password"}}
    assert env["HANDIN_REDIS_URL"] == "redis://:$(REDIS_PASSWORD)@handin-redis:6379/0"
    names = [item["name"] for item in api["env"]]
    assert names.index("REDIS_PASSWORD") < names.index("HANDIN_REDIS_URL")
    assert {"s3"} <= secret_refs(of_kind(manifests, "Deployment")["handin-api"])


def test_generated_secrets_hold_only_passwords(render_chart: Renderer):
    """A rendered password that differs from the live one must never reach a derived URL."""
    secrets = of_kind(render_chart(BUNDLED), "Secret")
    assert set(secrets["handin-postgresql"]["stringData"]) == {"password"}
    assert set(secrets["handin-redis"]["stringData"]) == {"password"}


def test_redis_gets_its_password_from_a_file_and_never_evicts_queues(render_chart: Renderer):
    manifests = render_chart(BUNDLED)
    redis = of_kind(manifests, "StatefulSet")["handin-redis"]
    [container] = pod_spec(redis)["containers"]
    command = " ".join(container["command"])
    assert "--requirepass" not in command and "redis-server /etc/redis/redis.conf" in command
    conf = of_kind(manifests, "ConfigMap")["handin-redis"]["data"]["redis.conf"].splitlines()
    assert "maxmemory 384mb" in conf and "maxmemory-policy noeviction" in conf
    assert "include /run/redis/auth.conf" in conf
    auth = next(volume for volume in pod_spec(redis)["volumes"] if volume["name"] == "auth")
    assert auth["emptyDir"]["medium"] == "Memory"
    annotations = redis["spec"]["template"]["metadata"]["annotations"]
    changed = of_kind(render_chart(BUNDLED, set_values={"redis.maxmemory": "1gb"}), "StatefulSet")["handin-redis"]
    assert changed["spec"]["template"]["metadata"]["annotations"] != annotations


def test_clamd_keeps_the_images_database_and_a_sidecar_refreshes_it(render_chart: Renderer):
    manifests = render_chart(BUNDLED)
    clamav = of_kind(manifests, "Deployment")["handin-clamav"]
    spec = pod_spec(clamav)
    assert [c["name"] for c in spec["containers"]] == ["clamd", "freshclam"]
    freshclam = spec["containers"][1]
    assert "--daemon" in freshclam["command"]
    # Nothing is mounted over the image's own database directory.
    for container in containers(clamav):
        assert "/var/lib/clamav" not in {mount["mountPath"] for mount in container["volumeMounts"]}
    seed = " ".join(spec["initContainers"][0]["command"])
    assert "cp -a /var/lib/clamav/." in seed
    conf = of_kind(manifests, "ConfigMap")["handin-clamav"]["data"]
    assert "ConcurrentDatabaseReload yes" in conf["clamd.conf"] and "SelfCheck" in conf["clamd.conf"]
    # Room for two databases during a reload.
    assert spec["containers"][0]["resources"]["limits"]["memory"] == "3Gi"
    checksum = clamav["spec"]["template"]["metadata"]["annotations"]["checksum/clamav-config"]
    changed = of_kind(render_chart(BUNDLED, set_values={"clamav.checksPerDay": "24"}), "Deployment")
    assert changed["handin-clamav"]["spec"]["template"]["metadata"]["annotations"]["checksum/clamav-config"] != checksum


def test_third_party_images_can_be_pinned_by_digest(render_chart: Renderer):
    digest = "sha256:" + "ab" * 32
    manifests = render_chart(
        BUNDLED, set_values={f"{service}.image.digest": digest for service in ("postgresql", "redis", "clamav")}
    )
    [postgres] = pod_spec(of_kind(manifests, "StatefulSet")["handin-postgresql"])["containers"]
    assert postgres["image"] == f"docker.io/library/postgres:16.4-alpine3.20@{digest}"
    assert all(c["image"].endswith(digest) for c in containers(of_kind(manifests, "Deployment")["handin-clamav"]))
    with pytest.raises(HelmError):
        render_chart(BUNDLED, set_values={"redis.image.digest": "latest"})


SCHEDULING = {
    "nodeSelector.pool": "handin",
    "tolerations[0].key": "dedicated",
    "tolerations[0].operator": "Exists",
    "imagePullSecrets[0].name": "registry",
}


def test_every_pod_honours_scheduling_and_pull_secrets(render_chart: Renderer):
    for manifest in render_chart(BUNDLED, set_values=SCHEDULING):
        if manifest["kind"] not in WORKLOAD_KINDS:
            continue
        spec = pod_spec(manifest)
        where = f"{manifest['kind']}/{manifest['metadata']['name']}"
        assert spec.get("nodeSelector") == {"pool": "handin"}, where
        assert spec.get("tolerations") == [{"key": "dedicated", "operator": "Exists"}], where
        assert spec.get("imagePullSecrets") == [{"name": "registry"}], where


def test_a_component_may_have_its_own_scheduling(render_chart: Renderer):
    manifests = render_chart(
        BUNDLED, set_values={"nodeSelector.pool": "handin", "workers.similarity.nodeSelector.pool": "cpu"}
    )
    workers = worker_deployments(manifests)
    assert pod_spec(workers["similarity"])["nodeSelector"] == {"pool": "cpu"}
    assert pod_spec(workers["scan"])["nodeSelector"] == {"pool": "handin"}
    redis = render_chart(BUNDLED, set_values={"redis.affinity.podAffinity.x": "y"})
    assert pod_spec(of_kind(redis, "StatefulSet")["handin-redis"])["affinity"] == {"podAffinity": {"x": "y"}}


def test_scaled_out_pods_spread_over_nodes_and_zones(render_chart: Renderer):
    manifests = render_chart()
    deployments = of_kind(manifests, "Deployment")
    for name in ("handin-api", "handin-router", "handin-autoscaler", "handin-worker-scan"):
        constraints = pod_spec(deployments[name])["topologySpreadConstraints"]
        keys = {c["topologyKey"] for c in constraints}
        assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}, name
        component = deployments[name]["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
        assert all(c["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == component for c in constraints)
        assert all(c["whenUnsatisfiable"] == "ScheduleAnyway" for c in constraints)


def test_workers_and_the_autoscaler_have_disruption_budgets(render_chart: Renderer):
    budgets = of_kind(render_chart(), "PodDisruptionBudget")
    for task in VALUES["workers"]:
        budget = budgets[f"handin-worker-{task}"]
        assert budget["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == f"worker-{task}"
    assert budgets["handin-autoscaler"]["spec"]["maxUnavailable"] == 1


def test_the_autoscaler_gets_only_the_database_and_redis(render_chart: Renderer):
    for values_file in (BUNDLED, EXTERNAL):
        manifests = render_chart(values_file)
        autoscaler = of_kind(manifests, "Deployment")["handin-autoscaler"]
        [container] = pod_spec(autoscaler)["containers"]
        assert "envFrom" not in container
        bundled = {"handin-postgresql", "handin-redis"}
        wanted = bundled if values_file == BUNDLED else {"handin-database", "handin-redis"}
        assert secret_refs(autoscaler) == wanted, values_file.name
        assert "HANDIN_ADMIN__SECRET" not in env_of(container) and "HANDIN_SECRET_KEY" not in env_of(container)


def test_the_chart_owns_the_autoscalers_lease(render_chart: Renderer):
    manifests = render_chart(set_values={"autoscaler.leaseName": "scaler-lock"})
    [lease] = of_kind(manifests, "Lease").values()
    assert lease["metadata"]["name"] == "scaler-lock"
    assert lease["metadata"]["labels"]["app.kubernetes.io/component"] == "autoscaler"
    [container] = pod_spec(of_kind(manifests, "Deployment")["handin-autoscaler"])["containers"]
    assert env_of(container)["HANDIN_AUTOSCALER__LEASE_NAME"] == "scaler-lock"
    [role] = of_kind(manifests, "Role").values()
    assert any(rule.get("resourceNames") == ["scaler-lock"] for rule in role["rules"])


def test_without_an_ingress_live_updates_go_to_the_router_not_the_api(render_chart: Renderer):
    config = of_kind(render_chart(), "ConfigMap")["handin-config"]["data"]
    assert config["HANDIN_ROUTER_URL"] == "ws://handin-router:80/ws"
    # Production: https:// at the first ingress host (TLS ends at or in front of the Ingress).
    assert config["HANDIN_PUBLIC_URL"] == "https://handin.example.edu"
    development = of_kind(render_chart(set_values={"environment": "development"}), "ConfigMap")["handin-config"]
    assert development["data"]["HANDIN_PUBLIC_URL"] == "http://handin-api"
    explicit = of_kind(render_chart(set_values={"publicUrl": "https://h.example"}), "ConfigMap")["handin-config"]
    assert explicit["data"]["HANDIN_ROUTER_URL"] == "wss://h.example/ws"


def test_helm_test_pod_uploads_as_the_demo_student(render_chart: Renderer):
    pods = of_kind(render_chart(BUNDLED), "Pod")
    [pod] = pods.values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = env_of(pod["spec"]["containers"][0])
    assert env["SMOKE_BASE_URL"] == "http://handin-api:80"
    assert env["SMOKE_ROUTER_URL"] == "http://handin-router:80"
    assert env["SMOKE_EMAIL"] == VALUES["demo"]["studentEmail"]


def test_helm_test_works_by_default_without_the_demo_login(render_chart: Renderer):
    assert VALUES["tests"]["enabled"] and not VALUES["demo"]["enabled"]
    [pod] = of_kind(render_chart(), "Pod").values()
    env = env_of(pod["spec"]["containers"][0])
    # No demo user to log in as: the test checks readiness of api and router only.
    assert "SMOKE_EMAIL" not in env and env["SMOKE_ROUTER_URL"]
    script = (CHART_DIR / "files" / "smoke_test.py").read_text()
    assert 'os.environ.get("SMOKE_EMAIL", "")' in script


def test_network_policies_admit_the_helm_test_pod(render_chart: Renderer):
    manifests = render_chart(BUNDLED)
    [pod] = of_kind(manifests, "Pod").values()
    labels = pod["metadata"]["labels"]
    policies = of_kind(manifests, "NetworkPolicy")
    for name in ("handin-api", "handin-router"):
        [rule] = [rule for rule in policies[name]["spec"]["ingress"] if rule["ports"][0]["port"] in (8000, 8080)]
        selectors = [peer["podSelector"]["matchLabels"] for peer in rule["from"] if "podSelector" in peer]
        assert any(selector.items() <= labels.items() for selector in selectors), name


@pytest.mark.parametrize("values_file", ALL_VALUES_FILES, ids=lambda path: path.name)
def test_every_object_carries_the_standard_labels(render_chart: Renderer, values_file: Path):
    wanted = {
        "app.kubernetes.io/name",
        "app.kubernetes.io/instance",
        "app.kubernetes.io/version",
        "app.kubernetes.io/managed-by",
        "app.kubernetes.io/component",
        "app.kubernetes.io/part-of",
        "helm.sh/chart",
    }
    for manifest in render_chart(values_file):
        assert wanted <= set(manifest["metadata"]["labels"]), manifest["metadata"]["name"]
        if manifest["kind"] in WORKLOAD_KINDS - {"Pod"}:
            assert wanted <= set(manifest["spec"]["template"]["metadata"]["labels"])


def _settings_field_exists(name: str) -> bool:
    model: type[BaseModel] = Settings
    parts = name.removeprefix("HANDIN_").lower().split("__")
    for index, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        annotation = field.annotation
        if index < len(parts) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


@pytest.mark.parametrize("values_file", ALL_VALUES_FILES, ids=lambda path: path.name)
def test_every_handin_variable_the_chart_sets_is_a_real_setting(render_chart: Renderer, values_file: Path):
    names = set()
    for manifest in render_chart(values_file):
        if manifest["kind"] == "ConfigMap" and manifest["metadata"]["name"] == "handin-config":
            names |= set(manifest["data"])
        if manifest["kind"] in WORKLOAD_KINDS:
            for container in containers(manifest):
                names |= set(env_of(container))
    handin = {name for name in names if name.startswith("HANDIN_")}
    assert handin
    unknown = sorted(name for name in handin if not _settings_field_exists(name))
    assert not unknown, f"not in core.settings.Settings: {unknown}"


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"workers.scan.replica": "2"}, "additional properties 'replica' not allowed"),
        ({"ingres.enabled": "true"}, "additional properties 'ingres' not allowed"),
        ({"api.replicaCount": "2"}, "additional properties 'replicaCount' not allowed"),
        ({"workers.scan.replicas": "-1"}, "minimum"),
        ({"api.replicas": "-3"}, "minimum"),
        ({"workers.scan.maxReplicas": "-1"}, "minimum"),
        ({"workers.scan.profile": "gpu"}, "value must be one of 'io', 'cpu'"),
        ({"profiles.gpu.maxJobs": "1"}, "additional properties 'gpu' not allowed"),
        ({"workers.ocr.profile": "io"}, "missing property 'image'"),
        ({"workers.scan.minReplicas": "5", "workers.scan.maxReplicas": "2"}, "minReplicas 5 is above maxReplicas 2"),
        ({"postgresql.enabled": "false"}, "externalDatabase.existingSecret is required"),
    ],
)
def test_bad_values_are_refused(render_chart: Renderer, values: dict[str, str], complaint: str):
    with pytest.raises(HelmError) as refused:
        render_chart(set_values=values)
    assert complaint in str(refused.value)


def test_a_new_worker_entry_is_enough_for_a_new_pool(render_chart: Renderer):
    manifests = render_chart(
        set_values={"workers.ocr.profile": "cpu", "workers.ocr.image.repository": "handin-worker-ocr"}
    )
    assert "ocr" in worker_deployments(manifests)
    [role] = of_kind(manifests, "Role").values()
    assert "handin-worker-ocr" in role["rules"][0]["resourceNames"]
