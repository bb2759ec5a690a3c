"""The chart after the api's hardening: production settings each pod would read, the internal
metrics port, trusted proxy headers, the router's Origin allow-list (docs/deploying.md)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from uvicorn.middleware.proxy_headers import _TrustedHosts

from core.receipts import KeyRing, sign_payload, verify_receipt
from core.settings import ReceiptSettings, Settings
from router.server import allowed_origins
from tests.chart.test_chart_objects import BUNDLED, containers, env_of, of_kind, pod_spec
from tests.fixtures.helm import ALL_VALUES_FILES, CHART_DIR, HelmError, Manifest, Renderer
from tests.fixtures.receipt_keys import receipt_signing_keys_env

KIND = CHART_DIR / "values-kind.yaml"
VARIANTS: list[Path | None] = [None, *ALL_VALUES_FILES]
HANDIN_IMAGES = ("handin-api", "handin-router", "handin-worker-", "handin-autoscaler")


def render(render_chart: Renderer, values_file: Path | None, **set_values: str) -> list[Manifest]:
    return render_chart(*([values_file] if values_file else []), set_values=set_values or None)


def _secret_value(manifests: list[Manifest], reference: dict[str, Any]) -> str:
    """What a secretKeyRef reads: the chart's generated Secret, or a strong stand-in for an existing one."""
    ref = reference["secretKeyRef"]
    secret = of_kind(manifests, "Secret").get(ref["name"])
    if secret is not None and ref["key"] in secret.get("stringData", {}):
        return str(secret["stringData"][ref["key"]])
    if ref["key"] == "receipt-signing-keys":  # an existing Secret holds a key list, not a random string
        return receipt_signing_keys_env()
    return secrets.token_urlsafe(36)


def pod_environment(manifests: list[Manifest], container: dict[str, Any]) -> dict[str, str]:
    """The environment the kubelet would give a container (ConfigMaps from envFrom, then env)."""
    env: dict[str, str] = {}
    configs = of_kind(manifests, "ConfigMap")
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] in configs:
            env.update(configs[source["configMapRef"]["name"]]["data"])
    for item in container.get("env", []):
        if "value" in item:
            env[item["name"]] = str(item["value"])
        elif "secretKeyRef" in item.get("valueFrom", {}):
            env[item["name"]] = _secret_value(manifests, item["valueFrom"])
    return env


def handin_containers(manifests: list[Manifest]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for manifest in manifests:
        if manifest["kind"] in {"Deployment", "Job"}:
            for container in containers(manifest):
                if any(image in container["image"] for image in HANDIN_IMAGES) and "HANDIN_REDIS_URL" in env_of(
                    container
                ):
                    found.append((f"{manifest['kind']}/{manifest['metadata']['name']}", container))
    return found


@pytest.mark.parametrize("values_file", VARIANTS, ids=lambda path: path.name if path else "default")
def test_every_pod_of_every_variant_passes_its_production_checks(
    render_chart: Renderer, values_file: Path | None, monkeypatch: pytest.MonkeyPatch
):
    """Each handin container's settings load from what the chart gives it, in the chart's environment."""
    manifests = render(render_chart, values_file)
    environment = of_kind(manifests, "ConfigMap")["handin-config"]["data"]["HANDIN_ENVIRONMENT"]
    checked = handin_containers(manifests)
    assert {name for name, _ in checked} >= {"Deployment/handin-api", "Deployment/handin-router"}
    for name, container in checked:
        env = pod_environment(manifests, container)
        assert env.get("HANDIN_ENVIRONMENT") == environment, name
        with monkeypatch.context() as patch:
            for variable in [variable for variable in os.environ if variable.startswith("HANDIN_")]:
                patch.delenv(variable)
            for variable, value in env.items():
                patch.setenv(variable, value)
            settings = Settings()  # raises when production refuses what this pod gets
        assert settings.environment == environment, name
    if environment == "production":
        [autoscaler] = [c for name, c in checked if name == "Deployment/handin-autoscaler"] or [None]
        if autoscaler is not None:
            env = pod_environment(manifests, autoscaler)
            # Production with only the database and Redis: no app secret, no public URL.
            assert env["HANDIN_COMPONENT"] == "autoscaler" and "HANDIN_SECRET_KEY" not in env


def test_kind_runs_in_development_and_the_shipped_production_values_in_production(render_chart: Renderer):
    def environment(values_file: Path | None) -> str:
        return str(
            of_kind(render(render_chart, values_file), "ConfigMap")["handin-config"]["data"]["HANDIN_ENVIRONMENT"]
        )

    assert environment(KIND) == "development"
    assert environment(None) == "production"
    assert environment(CHART_DIR / "values-production.yaml") == "production"


def test_production_with_an_http_public_url_is_refused_when_rendering(render_chart: Renderer):
    with pytest.raises(HelmError, match="production needs an https:// public URL"):
        render(render_chart, None, publicUrl="http://handin.example.edu")
    with pytest.raises(HelmError, match="production needs an https:// public URL"):
        render(render_chart, None, **{"ingress.hosts": "null"})
    development = render(render_chart, None, environment="development", publicUrl="http://handin.example.edu")
    assert (
        of_kind(development, "ConfigMap")["handin-config"]["data"]["HANDIN_PUBLIC_URL"] == "http://handin.example.edu"
    )


def _api(manifests: list[Manifest]) -> tuple[Manifest, dict[str, Any], Manifest]:
    deployment = of_kind(manifests, "Deployment")["handin-api"]
    [container] = pod_spec(deployment)["containers"]
    service = next(m for m in manifests if m["kind"] == "Service" and m["metadata"]["name"] == "handin-api")
    return deployment, container, service


def test_production_metrics_are_on_the_internal_port_which_the_ingress_never_routes(render_chart: Renderer):
    manifests = render(render_chart, BUNDLED)
    deployment, container, service = _api(manifests)
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8000, "internal": 9102}
    assert env_of(container)["HANDIN_SECURITY__INTERNAL_PORT"] == "9102"
    assert {port["name"]: port["targetPort"] for port in service["spec"]["ports"]} == {
        "http": "http",
        "internal": "internal",
    }
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert (annotations["prometheus.io/scrape"], annotations["prometheus.io/port"]) == ("true", "9102")
    assert annotations["prometheus.io/path"] == "/metrics"
    [ingress] = of_kind(manifests, "Ingress").values()
    backends = [path["backend"]["service"] for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    assert backends and all(backend["port"] == {"name": "http"} for backend in backends)
    moved = _api(render(render_chart, BUNDLED, **{"api.internalPort": "9200"}))
    assert moved[0]["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "9200"
    assert {port["port"] for port in moved[2]["spec"]["ports"]} == {80, 9200}


def test_in_development_metrics_stay_on_the_http_port(render_chart: Renderer):
    deployment, container, service = _api(render(render_chart, KIND))
    assert [port["name"] for port in container["ports"]] == ["http"]
    assert [port["name"] for port in service["spec"]["ports"]] == ["http"]
    assert deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8000"
    plain = _api(render(render_chart, BUNDLED, **{"api.prometheusAnnotations": "false"}))[0]
    assert "prometheus.io/scrape" not in plain["spec"]["template"]["metadata"]["annotations"]


def test_only_the_metrics_peers_may_reach_the_internal_port(render_chart: Renderer):
    policies = of_kind(render(render_chart, BUNDLED), "NetworkPolicy")
    rules = {rule["ports"][0]["port"]: rule for rule in policies["handin-api"]["spec"]["ingress"]}
    assert set(rules) == {8000, 9102}
    assert all(port["port"] == 8000 for port in rules[8000]["ports"])
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert rules[9102]["from"] == [monitoring]
    assert monitoring not in rules[8000]["from"]
    # Without metricsFrom: pods of the release's namespace, as for the workers' metrics.
    default = of_kind(render(render_chart, BUNDLED, **{"networkPolicy.metricsFrom": "null"}), "NetworkPolicy")
    [internal] = [rule for rule in default["handin-api"]["spec"]["ingress"] if rule["ports"][0]["port"] == 9102]
    assert internal["from"] == [{"podSelector": {}}]


def test_the_routers_probes_use_its_health_port_which_only_metrics_peers_may_reach(render_chart: Renderer):
    manifests = render(render_chart, BUNDLED)
    [container] = pod_spec(of_kind(manifests, "Deployment")["handin-router"])["containers"]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"http": 8080, "health": 8081}
    assert container["command"][-2:] == ["--health-port", "8081"]
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}, probe
    rules = {
        rule["ports"][0]["port"]: rule
        for rule in of_kind(manifests, "NetworkPolicy")["handin-router"]["spec"]["ingress"]
    }
    assert set(rules) == {8080, 8081}
    monitoring = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    assert rules[8081]["from"] == [monitoring]
    assert monitoring not in rules[8080]["from"]


def test_the_api_believes_forwarded_addresses_from_the_ingress_network_only(render_chart: Renderer):
    _, container, _ = _api(render(render_chart, BUNDLED))
    trusted = _TrustedHosts(env_of(container)["FORWARDED_ALLOW_IPS"])
    # An ingress controller pod on a typical pod network is believed; a client on the internet is not.
    for proxy in ("10.244.1.7", "172.17.0.5", "192.168.3.4", "fd00::1"):
        assert proxy in trusted, proxy
    assert "203.0.113.9" not in trusted
    _, narrowed, _ = _api(render(render_chart, BUNDLED, **{"api.forwardedAllowIps": "10.244.0.0/16"}))
    assert "10.244.1.7" in _TrustedHosts(env_of(narrowed)["FORWARDED_ALLOW_IPS"])
    assert "10.1.0.1" not in _TrustedHosts(env_of(narrowed)["FORWARDED_ALLOW_IPS"])


@pytest.mark.parametrize(
    ("values_file", "set_values", "origins"),
    [
        (None, {}, ["https://handin.example.edu"]),
        (BUNDLED, {}, ["https://handin.test"]),
        (KIND, {}, ["http://handin-api"]),
        (
            BUNDLED,
            {
                "publicUrl": "https://Handin.Example.edu/path",
                "router.allowedOrigins[0]": "https://other.example.edu:8443",
            },
            ["https://handin.example.edu", "https://handin.test", "https://other.example.edu:8443"],
        ),
    ],
)
def test_the_router_accepts_websockets_from_the_public_url_and_ingress_hosts(
    render_chart: Renderer, values_file: Path | None, set_values: dict[str, str], origins: list[str]
):
    config = of_kind(render(render_chart, values_file, **set_values), "ConfigMap")["handin-config"]["data"]
    listed = json.loads(config["HANDIN_ROUTER__ALLOWED_ORIGINS"])
    assert listed == origins
    settings = Settings(public_url=config["HANDIN_PUBLIC_URL"], router={"allowed_origins": listed})
    assert allowed_origins(settings) == frozenset(origins)


def test_the_helm_test_posts_with_the_public_origin(render_chart: Renderer):
    for values_file, origin in ((BUNDLED, "https://handin.test"), (KIND, "http://handin-api")):
        [pod] = of_kind(render(render_chart, values_file), "Pod").values()
        assert env_of(pod["spec"]["containers"][0])["SMOKE_ORIGIN"] == origin


def _env_sources(manifests: list[Manifest]) -> dict[str, dict[str, Any]]:
    """Each handin container's env entries by name, keyed by its object."""
    return {
        name: {item["name"]: item for item in container.get("env", [])}
        for name, container in handin_containers(manifests)
    }


def test_the_chart_generates_a_receipt_key_for_the_api_and_the_receipt_worker_only(render_chart: Renderer):
    manifests = render(render_chart, None)
    stored = of_kind(manifests, "Secret")["handin-app"]["stringData"]["receipt-signing-keys"]
    [key] = json.loads(stored)
    assert key["private_key"].startswith("-----BEGIN PRIVATE KEY-----")
    # The same text the pods get signs and verifies a receipt.
    ring = KeyRing.from_settings(
        "handin.test", ReceiptSettings.model_validate({"signing_keys": json.loads(stored)}).signing_keys
    )
    receipt = sign_payload({"installation": "handin.test", "submission_id": 1}, ring)
    assert receipt["key_id"] == key["id"] and verify_receipt(receipt, ring).signature_valid
    having = {name for name, env in _env_sources(manifests).items() if "HANDIN_RECEIPTS__SIGNING_KEYS" in env}
    assert having == {"Deployment/handin-api", "Deployment/handin-worker-receipt"}
    components = {name: pod_environment(manifests, c)["HANDIN_COMPONENT"] for name, c in handin_containers(manifests)}
    assert components["Deployment/handin-worker-receipt"] == "receipt-worker"
    assert components["Deployment/handin-worker-scan"] == "worker"


def test_the_receipt_key_comes_from_an_existing_secret_when_one_is_named(render_chart: Renderer):
    manifests = render(render_chart, None, **{"secrets.existingSecret": "site-app"})
    assert "handin-app" not in of_kind(manifests, "Secret")
    api = _env_sources(manifests)["Deployment/handin-api"]
    assert api["HANDIN_RECEIPTS__SIGNING_KEYS"]["valueFrom"]["secretKeyRef"] == {
        "name": "site-app",
        "key": "receipt-signing-keys",
    }


def test_the_inbound_secret_reaches_the_api_alone(render_chart: Renderer):
    inbound = "HANDIN_ADMIN__INBOUND_SECRET"
    # Unset: an optional reference the api may lack (the endpoint then answers 503).
    manifests = render(render_chart, None)
    assert "admin-inbound-secret" not in of_kind(manifests, "Secret")["handin-app"]["stringData"]
    sources = _env_sources(manifests)
    assert {name for name, env in sources.items() if inbound in env} == {"Deployment/handin-api"}
    assert sources["Deployment/handin-api"][inbound]["valueFrom"]["secretKeyRef"]["optional"] is True
    # A value: kept in the chart's Secret, and production accepts the api with it.
    value = secrets.token_urlsafe(36)
    manifests = render(render_chart, None, **{"adminSystem.inboundSecret": value})
    assert of_kind(manifests, "Secret")["handin-app"]["stringData"]["admin-inbound-secret"] == value
    # An existing Secret: required, under its own key.
    manifests = render(
        render_chart, None, **{"adminSystem.existingSecret": "admin", "adminSystem.inboundSecretKey": "k"}
    )
    reference = _env_sources(manifests)["Deployment/handin-api"][inbound]["valueFrom"]["secretKeyRef"]
    assert reference == {"name": "admin", "key": "k"}
    with pytest.raises(HelmError, match=r"adminSystem\.inboundSecret is kept in the chart.s Secret"):
        render(render_chart, None, **{"adminSystem.inboundSecret": value, "secrets.existingSecret": "site-app"})
