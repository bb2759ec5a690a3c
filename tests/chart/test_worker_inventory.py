"""The worker modules, the chart's `workers` map and skaffold's artifacts agree.

A task added in one place and forgotten in another would be a queue nobody
drains (or a Deployment running a module that does not exist).
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from core import keys
from core.pipeline import STEPS_BY_NAME

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_VALUES = yaml.safe_load((REPO_ROOT / "charts" / "handin" / "values.yaml").read_text())
SKAFFOLD = yaml.safe_load((REPO_ROOT / "skaffold.yaml").read_text())
WORKER_IMAGE_PREFIX = "handin-worker-"


def modules_with_worker_settings() -> set[str]:
    """workers/<task>.py files that define a module-level WorkerSettings (read, not imported)."""
    found = set()
    for path in (REPO_ROOT / "workers").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ClassDef) and node.name == "WorkerSettings":
                found.add(path.stem)
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            if isinstance(node, ast.Assign | ast.AnnAssign) and any(
                isinstance(target, ast.Name) and target.id == "WorkerSettings" for target in targets
            ):
                found.add(path.stem)
    return found


def skaffold_worker_artifacts() -> dict[str, dict[str, str]]:
    return {
        artifact["image"].removeprefix(WORKER_IMAGE_PREFIX): artifact["docker"].get("buildArgs", {})
        for artifact in SKAFFOLD["build"]["artifacts"]
        if artifact["image"].startswith(WORKER_IMAGE_PREFIX)
    }


EXPECTED = {*keys.TASKS, keys.MAINTENANCE_TASK}


def test_every_task_has_a_worker_module_and_every_worker_module_is_a_task():
    modules = modules_with_worker_settings()
    assert EXPECTED - modules == set(), "tasks without a workers/<task>.py defining WorkerSettings"
    assert modules - EXPECTED == set(), "worker modules that are not in core.keys.TASKS"


def test_every_worker_module_has_a_chart_entry_and_vice_versa():
    modules = modules_with_worker_settings() | EXPECTED
    chart = set(CHART_VALUES["workers"])
    assert modules - chart == set(), "worker modules missing from the chart's workers map"
    assert chart - modules == set(), "chart workers with no worker module"


def test_every_worker_module_has_a_skaffold_artifact_and_vice_versa():
    modules = modules_with_worker_settings() | EXPECTED
    artifacts = skaffold_worker_artifacts()
    assert modules - set(artifacts) == set(), "worker modules skaffold does not build"
    assert set(artifacts) - modules == set(), "skaffold builds workers that do not exist"
    for task, build_args in artifacts.items():
        assert build_args["TASK"] == task


def test_profiles_match_the_pipeline_and_documents_go_only_to_cpu_tasks_that_read_files():
    artifacts = skaffold_worker_artifacts()
    for task in keys.TASKS:
        assert CHART_VALUES["workers"][task]["profile"] == STEPS_BY_NAME[task].profile, task
        wants_documents = task in ("similarity", "thumbnail")
        assert (artifacts[task]["EXTRAS"] == "documents") == wants_documents, task
    assert CHART_VALUES["workers"][keys.MAINTENANCE_TASK]["scaling"] == "fixed"


def test_each_pools_time_limit_is_its_longest_jobs_time_limit():
    """The chart sizes arq's completion wait and the pod's grace from timeLimitSeconds."""
    from core.settings import Settings
    from workers import maintenance

    settings = Settings()
    for task in keys.TASKS:
        limit = settings.retry_policy(task).timeout_seconds
        assert CHART_VALUES["workers"][task]["timeLimitSeconds"] == limit, task
    jobs = [*maintenance.functions(settings), *maintenance.cron_jobs(settings)]
    longest = max(job.timeout_s or 0 for job in jobs)
    assert CHART_VALUES["workers"][keys.MAINTENANCE_TASK]["timeLimitSeconds"] == longest


def test_skaffold_passes_every_built_image_to_the_chart():
    [release] = SKAFFOLD["deploy"]["helm"]["releases"]
    templates = release["setValueTemplates"]
    for artifact in SKAFFOLD["build"]["artifacts"]:
        image = artifact["image"]
        variable = image.replace("-", "_")
        key = (
            f"workers.{image.removeprefix(WORKER_IMAGE_PREFIX)}"
            if image.startswith(WORKER_IMAGE_PREFIX)
            else image.removeprefix("handin-")
        )
        assert templates[f"{key}.image.repository"] == f"{{{{.IMAGE_REPO_{variable}}}}}"
        assert templates[f"{key}.image.tag"] == f"{{{{.IMAGE_TAG_{variable}}}}}"
    assert {forward["resourceName"] for forward in SKAFFOLD["portForward"]} == {"handin-api", "handin-router"}
    profiles = {profile["name"] for profile in SKAFFOLD["profiles"]}
    assert {"dev", "kind"} <= profiles
