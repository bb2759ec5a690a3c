"""How the suite runs in parallel (tests/conftest.py): what it refuses."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_a_given_redis_server_is_refused_for_a_parallel_run_with_what_to_do_instead() -> None:
    """Every process would flush the one server's database around its tests: a run that could only
    fail in confusing ways stops at once and says why."""
    env = {**os.environ, "HANDIN_TEST_REDIS_URL": "redis://127.0.0.1:9/0"}
    env.pop("HANDIN_TEST_REDIS_STARTED_BY", None)
    command = [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "tests/unit/test_safe_next.py"]
    run = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 4  # pytest's usage error
    assert "run with one process" in run.stderr and "HANDIN_TEST_REDIS_URL" in run.stderr
