"""The `helm test` script (charts/handin/files/smoke_test.py) against a real api in production.

As in the cluster: the test pod reaches the api over plain http while the
public URL is https (so the site's cookies are Secure), and the api accepts
changes only with the public Origin and, for the upload, the page's CSRF token.
The api, the workers and Redis are real processes; the database is SQLite.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.demo import DEMO_USERS, seed_demo
from tests.fixtures.helm import CHART_DIR
from tests.fixtures.receipt_keys import receipt_signing_keys_env
from tests.fixtures.system import System, _create_schema, run_async, start_redis, wait_http
from tests.services import free_port, local_settings, settings_env

PUBLIC_URL = "https://handin.example.edu"
SCRIPT = CHART_DIR / "files" / "smoke_test.py"


@pytest.fixture(scope="module")
def production_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    tmp = tmp_path_factory.mktemp("smoke")
    redis_process, redis_url = start_redis(tmp)
    api_port = free_port()
    database_url = f"sqlite+aiosqlite:///{tmp}/handin.db"
    settings = local_settings(database_url, redis_url, tmp)
    env = {
        **{name: value for name, value in os.environ.items() if not name.startswith("HANDIN_")},
        **settings_env(settings),
        "HANDIN_ENVIRONMENT": "production",
        "HANDIN_PUBLIC_URL": PUBLIC_URL,
        "HANDIN_SECRET_KEY": secrets.token_urlsafe(36),
        "HANDIN_ADMIN__SECRET": secrets.token_urlsafe(36),
        "HANDIN_SIMILARITY__WEBHOOK_SECRET": secrets.token_urlsafe(36),
        "HANDIN_RECEIPTS__SIGNING_KEYS": receipt_signing_keys_env(),
        "HANDIN_SECURITY__INTERNAL_PORT": str(free_port()),
        "HANDIN_SECURITY__INTERNAL_HOST": "127.0.0.1",
        "HANDIN_WORKER__HTTP_PORT": "0",
        "HANDIN_WORKER__POLL_DELAY_SECONDS": "0.02",
        "HANDIN_LOG_JSON": "false",
        "HANDIN_LOG_LEVEL": "WARNING",
    }
    run_async(lambda: _create_schema(database_url))
    run_async(lambda: seed_demo(settings))
    logs = tmp / "logs"
    logs.mkdir()
    system = System(f"http://127.0.0.1:{api_port}", 0, settings, env, logs)
    try:
        system.start("api", "-m", "core.cli", "api", "--host", "127.0.0.1", "--port", str(api_port))
        system.start("workers", "-m", "tests.browser.run_workers")
        wait_http(f"{system.url}/healthz", system.processes["api"], logs / "api.log")
        yield system
    finally:
        system.stop()
        redis_process.terminate()
        redis_process.wait(timeout=10)


def run_script(system: System, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    student = next(user for user in DEMO_USERS if user.role == "student")
    env = {
        "PATH": os.environ["PATH"],
        "SMOKE_BASE_URL": system.url,
        "SMOKE_ORIGIN": PUBLIC_URL,
        "SMOKE_EMAIL": student.email,
        "SMOKE_PASSWORD": student.password,
        "SMOKE_ASSIGNMENT_ID": "1",
        "SMOKE_TIMEOUT_SECONDS": "120",
        **extra,
    }
    # Outside the repository, with only the script, as in the test pod.
    return subprocess.run(
        [sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )


def test_the_helm_test_logs_in_and_uploads_like_a_browser_on_the_public_site(production_system: System, tmp_path: Path):
    result = run_script(production_system, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "submission complete" in result.stdout


def test_the_helm_test_fails_loudly_when_its_origin_is_not_the_sites(production_system: System, tmp_path: Path):
    result = run_script(production_system, tmp_path, SMOKE_ORIGIN="https://elsewhere.example.edu")
    assert result.returncode != 0
    assert "login answered 403" in result.stderr
