"""What the chart renders, read as objects: the promises of docs/deploying.md."""

from __future__ import annotations

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
        wait = float(env["HANDIN_WORKER__JOB_COMPLETION_WAIT_SECONDS"])
        assert wait == profile["jobCompletionWaitSeconds"]
        # The kubelet must not kill a worker that is still finishing its jobs.
        assert pod_spec(deployment)["terminationGracePeriodSeconds"] > wait
        images.add(container["image"])
    assert len(images) == len(workers)


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
        if VALUES["workers"][task]["autoscale"]:
            assert "replicas" not in deployment["spec"], task
        else:
            assert deployment["spec"]["replicas"] == VALUES["workers"][task]["replicas"], task
    assert "replicas" in workers["maintenance"]["spec"]


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
        if worker["autoscale"]:
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
    autoscaled = {f"handin-worker-{task}" for task, worker in VALUES["workers"].items() if worker["autoscale"]}
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
        ("coordination.k8s.io", "leases", "get", ("*",)),
        ("coordination.k8s.io", "leases", "create", ("*",)),
        ("coordination.k8s.io", "leases", "update", ("*",)),
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
            # Long-running containers are probed; one-shot Jobs, init containers and test pods are not.
            if manifest["kind"] == "Deployment" and container in spec["containers"]:
                assert "livenessProbe" in container and "readinessProbe" in container, where


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


def test_production_values_bundle_nothing(render_chart: Renderer):
    manifests = render_chart(CHART_DIR / "values-production.yaml")
    components = {m["metadata"]["labels"]["app.kubernetes.io/component"] for m in manifests}
    assert not components & {"postgresql", "redis", "minio", "clamav", "demo"}
    config = of_kind(manifests, "ConfigMap")["handin-config"]["data"]
    assert config["HANDIN_ENVIRONMENT"] == "production"
    assert config["HANDIN_SCANNER__CLAMD_HOST"] == "clamd.security.svc.cluster.local"


def test_bundled_services_come_up_with_redis_persisting_its_queues(render_chart: Renderer):
    manifests = render_chart(BUNDLED)
    deployments = of_kind(manifests, "Deployment")
    for name in ("handin-postgresql", "handin-redis", "handin-minio", "handin-clamav"):
        assert name in deployments
    redis_command = " ".join(pod_spec(deployments["handin-redis"])["containers"][0]["command"])
    assert "--appendonly yes" in redis_command
    config = of_kind(manifests, "ConfigMap")["handin-config"]["data"]
    assert config["HANDIN_STORAGE__S3_ENDPOINT_URL"] == "http://handin-minio:9000"
    assert config["HANDIN_SCANNER__CLAMD_HOST"] == "handin-clamav"
    assert {"handin-seed-demo", "handin-minio-bucket"} <= set(of_kind(manifests, "Job"))
    assert {"handin-postgresql", "handin-redis", "handin-minio", "handin-clamav"} <= set(
        of_kind(manifests, "NetworkPolicy")
    )


def test_helm_test_pod_uploads_as_the_demo_student(render_chart: Renderer):
    pods = of_kind(render_chart(BUNDLED), "Pod")
    [pod] = pods.values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    env = env_of(pod["spec"]["containers"][0])
    assert env["SMOKE_BASE_URL"] == "http://handin-api:80"
    assert env["SMOKE_EMAIL"] == VALUES["demo"]["studentEmail"]


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
