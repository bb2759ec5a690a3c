"""`helm lint --strict` and Kubernetes schema validation for every values variant."""

from __future__ import annotations

import functools
from pathlib import Path

import kubernetes_validate
import kubernetes_validate.utils
import pytest

from tests.fixtures.helm import ALL_VALUES_FILES, CHART_DIR, Renderer, run_helm

# The chart's kubeVersion floor and the newest release kubernetes-validate knows.
OLDEST_KUBERNETES = "1.29.0"
NEWEST_KUBERNETES = "1.37.0"


def test_the_chart_declares_the_oldest_version_we_validate_against():
    assert f'kubeVersion: ">={OLDEST_KUBERNETES}-0"' in (CHART_DIR / "Chart.yaml").read_text()


def test_every_ci_variant_exists():
    names = {path.name for path in (CHART_DIR / "ci").glob("*.yaml")}
    assert names == {
        "all-bundled-values.yaml",
        "all-external-values.yaml",
        "autoscaler-off-values.yaml",
        "minimal-values.yaml",
    }


@pytest.mark.parametrize("values_file", ALL_VALUES_FILES, ids=lambda path: path.name)
def test_helm_lint_strict(helm_binary: Path, values_file: Path):
    output = run_helm(helm_binary, "lint", "--strict", str(CHART_DIR), "-f", str(values_file))
    assert "0 chart(s) failed" in output
    assert "[WARNING]" not in output and "[ERROR]" not in output, output


@pytest.fixture(scope="module", autouse=True)
def _schemas_read_once():
    """kubernetes-validate re-reads its multi-megabyte definitions file per object; read each once."""
    original = kubernetes_validate.utils.schema_contents
    kubernetes_validate.utils.schema_contents = functools.cache(original)
    yield
    kubernetes_validate.utils.schema_contents = original


@pytest.mark.parametrize("version", [OLDEST_KUBERNETES, NEWEST_KUBERNETES])
@pytest.mark.parametrize("values_file", ALL_VALUES_FILES, ids=lambda path: path.name)
def test_rendered_objects_match_the_kubernetes_schemas(render_chart: Renderer, values_file: Path, version: str):
    manifests = render_chart(values_file)
    assert manifests
    failures = []
    for manifest in manifests:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{manifest['kind']}/{manifest['metadata']['name']}: {error.message} at {error.path}")
    assert not failures, "\n".join(failures)
