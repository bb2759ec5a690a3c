"""The chart on a real kube-apiserver: install, upgrade, uninstall, hooks admitted, RBAC per ServiceAccount.

Every values variant is installed with the real helm binary (`--no-hooks`: no
kubelet runs pods here, so hooks would never finish), upgraded and
uninstalled in a namespace of its own. Hooks are checked phase by phase under
the conditions helm gives them: a pre-install hook meets an empty namespace
holding only the hooks of lower weight; post-install, pre-upgrade and test
hooks meet the installed release. A Job's pod template is created as a Pod
with `dryRun=All`, which runs admission (ServiceAccount admission included)
without storing anything. RBAC is checked with real tokens of the chart's
ServiceAccounts, both by asking the API server (SelfSubjectAccessReview, what
`kubectl auth can-i` does) and by making the calls.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from kubernetes.dynamic import DynamicClient

from tests.fixtures.envtest import ControlPlane
from tests.fixtures.helm import ALL_VALUES_FILES, CHART_DIR, run_helm

RELEASE = "handin"
VARIANTS: list[Path | None] = [None, *ALL_VALUES_FILES]
HOOK_PHASES = ("pre-install", "post-install", "pre-upgrade", "post-upgrade", "test")
BUNDLED_STATEFULSETS = ("postgresql", "redis", "minio")


def variant_id(path: Path | None) -> str:
    return path.name if path else "default"


def values_args(values_file: Path | None, extra: dict[str, str] | None = None) -> list[str]:
    args = ["-f", str(values_file)] if values_file else []
    for name, value in (extra or {}).items():
        args += ["--set", f"{name}={value}"]
    return args


class Helm:
    def __init__(self, binary: Path, plane: ControlPlane, namespace: str) -> None:
        self.binary, self.plane, self.namespace = binary, plane, namespace

    def __call__(self, *args: str) -> str:
        return run_helm(self.binary, *args, "--namespace", self.namespace, "--kubeconfig", str(self.plane.kubeconfig))

    def template(self, *args: str) -> list[dict[str, Any]]:
        return [doc for doc in yaml.safe_load_all(self("template", RELEASE, str(CHART_DIR), *args)) if doc]


@pytest.fixture
def helm(helm_binary: Path, control_plane: ControlPlane, namespace: str) -> Iterator[Helm]:
    runner = Helm(helm_binary, control_plane, namespace)
    yield runner
    # The namespace itself stays (no controller-manager finalises it); its contents go.
    subprocess.run(
        [
            str(helm_binary),
            "uninstall",
            RELEASE,
            "--no-hooks",
            "-n",
            namespace,
            "--kubeconfig",
            str(control_plane.kubeconfig),
        ],
        capture_output=True,
        timeout=120,
    )
    with control_plane.client() as api:
        k8s.CoreV1Api(api).delete_collection_namespaced_persistent_volume_claim(namespace)
        k8s.CoreV1Api(api).delete_collection_namespaced_service_account(namespace)


def namespaced_kinds(api: k8s.ApiClient) -> list[tuple[str, str]]:
    """(group/version, plural) of every namespaced resource that can be listed."""
    found = []
    groups = [("", "v1")] + [
        (group.name, group.preferred_version.version) for group in k8s.ApisApi(api).get_api_versions().groups
    ]
    for group, version in groups:
        path = f"/api/{version}" if not group else f"/apis/{group}/{version}"
        resources = api.call_api(
            path, "GET", response_type="object", _return_http_data_only=True, auth_settings=["BearerToken"]
        )
        for resource in resources["resources"]:
            if resource["namespaced"] and "list" in resource["verbs"] and "/" not in resource["name"]:
                found.append((f"{group}/{version}" if group else version, resource["name"]))
    return found


def everything_in(plane: ControlPlane, namespace: str) -> set[tuple[str, str]]:
    """(resource, name) of every object in the namespace, events aside."""
    left = set()
    with plane.client() as api:
        for group_version, plural in namespaced_kinds(api):
            if plural == "events":
                continue
            prefix = "/api" if "/" not in group_version else "/apis"
            items = api.call_api(
                f"{prefix}/{group_version}/namespaces/{namespace}/{plural}",
                "GET",
                response_type="object",
                _return_http_data_only=True,
                auth_settings=["BearerToken"],
            )["items"]
            left |= {(plural, item["metadata"]["name"]) for item in items}
    return left


def hooks_of(manifests: list[dict[str, Any]], phase: str) -> list[dict[str, Any]]:
    """The hooks helm runs in `phase`, in its order (weight, then kind and name as helm sorts ties)."""
    hooks = [m for m in manifests if phase in m["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")]
    return sorted(hooks, key=lambda m: (int(m["metadata"]["annotations"].get("helm.sh/hook-weight", "0")), m["kind"]))


def admit(plane: ControlPlane, namespace: str, hook: dict[str, Any]) -> None:
    """What helm and then the Job controller would create: a Job's pod only as a dry run, the rest for real."""
    with plane.client() as api:
        dynamic = DynamicClient(api)
        if hook["kind"] in ("Job", "Pod"):
            pod = (
                hook
                if hook["kind"] == "Pod"
                else {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"{hook['metadata']['name']}-admission",
                        **hook["spec"]["template"]["metadata"],
                    },
                    "spec": hook["spec"]["template"]["spec"],
                }
            )
            dynamic.resources.get(api_version="v1", kind="Pod").create(
                body=pod, namespace=namespace, query_params=[("dryRun", "All")]
            )
            if hook["kind"] == "Job":
                dynamic.resources.get(api_version="batch/v1", kind="Job").create(
                    body=hook, namespace=namespace, query_params=[("dryRun", "All")]
                )
        else:
            dynamic.resources.get(api_version=hook["apiVersion"], kind=hook["kind"]).create(
                body=hook, namespace=namespace
            )


def remove(plane: ControlPlane, namespace: str, hooks: list[dict[str, Any]]) -> None:
    """hook-succeeded: helm deletes the phase's hooks after it."""
    with plane.client() as api:
        dynamic = DynamicClient(api)
        for hook in hooks:
            if hook["kind"] not in ("Job", "Pod"):
                resource = dynamic.resources.get(api_version=hook["apiVersion"], kind=hook["kind"])
                resource.delete(name=hook["metadata"]["name"], namespace=namespace)


def statefulset_claims(plane: ControlPlane, namespace: str) -> list[str]:
    """What the StatefulSet controller (absent here) would create: one PVC per claim template, as it names them."""
    made = []
    with plane.client() as api:
        apps, core = k8s.AppsV1Api(api), k8s.CoreV1Api(api)
        for statefulset in apps.list_namespaced_stateful_set(namespace).items:
            for template in statefulset.spec.volume_claim_templates or []:
                name = f"{template.metadata.name}-{statefulset.metadata.name}-0"
                claim = k8s.V1PersistentVolumeClaim(
                    metadata=k8s.V1ObjectMeta(name=name, labels=template.metadata.labels), spec=template.spec
                )
                core.create_namespaced_persistent_volume_claim(namespace, claim)
                made.append(name)
    return made


def app_secret(plane: ControlPlane, namespace: str) -> dict[str, str] | None:
    """The chart's generated app Secret, if this variant has one."""
    with plane.client() as api:
        try:
            return dict(k8s.CoreV1Api(api).read_namespaced_secret(f"{RELEASE}-app", namespace).data)
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise


@pytest.mark.parametrize("values_file", VARIANTS, ids=variant_id)
def test_install_upgrade_uninstall_keeps_only_the_data(
    control_plane: ControlPlane, namespace: str, helm: Helm, values_file: Path | None
) -> None:
    args = values_args(values_file)
    helm("install", RELEASE, str(CHART_DIR), "--no-hooks", *args)
    manifests = helm.template(*args, "--skip-tests")
    installed = {
        (m["kind"], m["metadata"]["name"])
        for m in manifests
        if "helm.sh/hook" not in m["metadata"].get("annotations", {})
    }
    with control_plane.client() as api:
        dynamic = DynamicClient(api)
        for manifest in manifests:
            if (manifest["kind"], manifest["metadata"]["name"]) in installed:
                resource = dynamic.resources.get(api_version=manifest["apiVersion"], kind=manifest["kind"])
                assert resource.get(name=manifest["metadata"]["name"], namespace=namespace)
    claims = statefulset_claims(control_plane, namespace)
    if values_file is None or values_file.name == "all-bundled-values.yaml":
        assert sorted(claims) == sorted(f"data-{RELEASE}-{service}" + "-0" for service in BUNDLED_STATEFULSETS)
    generated = app_secret(control_plane, namespace)
    helm("upgrade", RELEASE, str(CHART_DIR), "--no-hooks", *args, "--set", "podAnnotations.upgraded=yes")
    with control_plane.client() as api:
        api_deployment = k8s.AppsV1Api(api).read_namespaced_deployment(f"{RELEASE}-api", namespace)
    assert api_deployment.spec.template.metadata.annotations["upgraded"] == "yes"
    # Generated secrets, the receipt signing key among them, survive the upgrade (receipts stay valid).
    assert app_secret(control_plane, namespace) == generated
    helm("uninstall", RELEASE, "--no-hooks")
    # Nothing is left but the data volumes (and the Secrets the chart never owned: none here).
    assert everything_in(control_plane, namespace) == {("persistentvolumeclaims", name) for name in claims}


@pytest.mark.parametrize("values_file", VARIANTS, ids=variant_id)
def test_every_hook_is_admitted_in_its_phase(
    control_plane: ControlPlane, namespace: str, helm: Helm, values_file: Path | None
) -> None:
    args = values_args(values_file)
    manifests = helm.template(*args)
    # pre-install: nothing of the release exists, only the earlier hooks of this phase.
    assert everything_in(control_plane, namespace) == set()
    pre_install = hooks_of(manifests, "pre-install")
    for hook in pre_install:
        admit(control_plane, namespace, hook)
    remove(control_plane, namespace, pre_install)
    helm("install", RELEASE, str(CHART_DIR), "--no-hooks", *args)
    for phase in HOOK_PHASES[1:]:
        hooks = hooks_of(manifests, phase)
        for hook in hooks:
            admit(control_plane, namespace, hook)
        remove(control_plane, namespace, hooks)


def test_a_pod_naming_a_missing_service_account_is_refused(control_plane: ControlPlane, namespace: str) -> None:
    """The admission the hook test relies on: before install, the chart's own ServiceAccount is not there."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "early"},
        "spec": {"serviceAccountName": RELEASE, "containers": [{"name": "c", "image": "busybox"}]},
    }
    with control_plane.client() as api, pytest.raises(k8s.ApiException) as refused:
        k8s.CoreV1Api(api).create_namespaced_pod(namespace, pod, dry_run="All")
    assert refused.value.status == 403 and "serviceaccount" in refused.value.body.lower()


AUTOSCALED = ("scan", "store", "similarity", "admin", "receipt")
EXTERNAL_POOL = "thumbnail"


def can(plane: ControlPlane, token: str, namespace: str, verb: str, group: str, resource: str, name: str = "") -> bool:
    resource, _, subresource = resource.partition("/")
    review = k8s.V1SelfSubjectAccessReview(
        spec=k8s.V1SelfSubjectAccessReviewSpec(
            resource_attributes=k8s.V1ResourceAttributes(
                namespace=namespace, verb=verb, group=group, resource=resource, subresource=subresource, name=name
            )
        )
    )
    with plane.client(token) as api:
        return bool(k8s.AuthorizationV1Api(api).create_self_subject_access_review(review).status.allowed)


def test_each_service_account_may_do_exactly_its_job(control_plane: ControlPlane, namespace: str, helm: Helm) -> None:
    helm("install", RELEASE, str(CHART_DIR), "--no-hooks", "--set", f"workers.{EXTERNAL_POOL}.scaling=external")
    lease = f"{RELEASE}-autoscaler"
    allowed = {
        *(("get", "apps", "deployments/scale", f"{RELEASE}-worker-{task}") for task in AUTOSCALED),
        *(("patch", "apps", "deployments/scale", f"{RELEASE}-worker-{task}") for task in AUTOSCALED),
        *((verb, "coordination.k8s.io", "leases", lease) for verb in ("get", "update", "patch")),
        ("create", "coordination.k8s.io", "leases", ""),
        ("get", "autoscaling", "horizontalpodautoscalers", ""),
        ("list", "autoscaling", "horizontalpodautoscalers", ""),
    }
    refused = {
        ("patch", "apps", "deployments/scale", f"{RELEASE}-api"),
        ("patch", "apps", "deployments/scale", f"{RELEASE}-router"),
        ("patch", "apps", "deployments/scale", f"{RELEASE}-worker-{EXTERNAL_POOL}"),
        ("patch", "apps", "deployments/scale", f"{RELEASE}-worker-maintenance"),
        ("update", "apps", "deployments/scale", f"{RELEASE}-worker-scan"),
        ("patch", "apps", "deployments", f"{RELEASE}-worker-scan"),
        ("update", "apps", "deployments", f"{RELEASE}-worker-scan"),
        ("delete", "apps", "deployments", f"{RELEASE}-worker-scan"),
        ("list", "apps", "deployments", ""),
        ("create", "apps", "deployments", ""),
        ("get", "", "secrets", f"{RELEASE}-app"),
        ("list", "", "secrets", ""),
        ("get", "", "configmaps", f"{RELEASE}-config"),
        ("list", "", "pods", ""),
        ("create", "", "pods", ""),
        ("delete", "coordination.k8s.io", "leases", lease),
        ("patch", "coordination.k8s.io", "leases", "someone-elses-lease"),
        ("get", "coordination.k8s.io", "leases", "someone-elses-lease"),
        ("list", "coordination.k8s.io", "leases", ""),
        ("create", "autoscaling", "horizontalpodautoscalers", ""),
        ("patch", "rbac.authorization.k8s.io", "roles", lease),
        ("create", "", "serviceaccounts/token", f"{RELEASE}-autoscaler"),
    }
    autoscaler = control_plane.service_account_token(namespace, f"{RELEASE}-autoscaler")
    for verb, group, resource, name in sorted(allowed):
        assert can(control_plane, autoscaler, namespace, verb, group, resource, name), (verb, resource, name)
    for verb, group, resource, name in sorted(refused):
        assert not can(control_plane, autoscaler, namespace, verb, group, resource, name), (verb, resource, name)
    # The app's ServiceAccount (api, router, workers, jobs) may do nothing at all.
    app = control_plane.service_account_token(namespace, RELEASE)
    for verb, group, resource, name in sorted(allowed | refused):
        assert not can(control_plane, app, namespace, verb, group, resource, name), (verb, resource, name)


def test_the_autoscalers_token_scales_its_pools_holds_its_lease_and_nothing_more(
    control_plane: ControlPlane, namespace: str, helm: Helm
) -> None:
    """The calls autoscaler/targets.py and leader.py make, made with the autoscaler's own token."""
    helm("install", RELEASE, str(CHART_DIR), "--no-hooks", "--set", f"workers.{EXTERNAL_POOL}.scaling=external")
    token = control_plane.service_account_token(namespace, f"{RELEASE}-autoscaler")
    with control_plane.client(token) as api:
        apps, leases, core = k8s.AppsV1Api(api), k8s.CoordinationV1Api(api), k8s.CoreV1Api(api)
        scan = f"{RELEASE}-worker-scan"
        assert apps.read_namespaced_deployment_scale(scan, namespace).spec.replicas is not None
        apps.patch_namespaced_deployment_scale(scan, namespace, {"spec": {"replicas": 3}})
        lease = leases.read_namespaced_lease(f"{RELEASE}-autoscaler", namespace)
        assert lease.metadata.labels["app.kubernetes.io/instance"] == RELEASE
        leases.patch_namespaced_lease(
            f"{RELEASE}-autoscaler",
            namespace,
            {"spec": {"holderIdentity": "me", "leaseDurationSeconds": 15}},
        )
        for call in (
            lambda: apps.patch_namespaced_deployment_scale(f"{RELEASE}-api", namespace, {"spec": {"replicas": 0}}),
            lambda: apps.patch_namespaced_deployment_scale(
                f"{RELEASE}-worker-{EXTERNAL_POOL}", namespace, {"spec": {"replicas": 9}}
            ),
            lambda: core.list_namespaced_secret(namespace),
            lambda: core.read_namespaced_secret(f"{RELEASE}-postgresql", namespace),
        ):
            with pytest.raises(k8s.ApiException) as refused:
                call()
            assert refused.value.status == 403
    with control_plane.client() as api:
        assert k8s.AppsV1Api(api).read_namespaced_deployment_scale(scan, namespace).spec.replicas == 3
