"""A stopping worker lets its running jobs finish: arq's completion wait follows each task's time limit.

Before, every worker waited one fixed 25 s after SIGTERM (the chart: 25 s IO,
60 s CPU) while a store job may run 135 s and a similarity job 315 s: every
scale-down or rollout cancelled long jobs and burnt a try. The real-process
test runs `workers.run.serve` (what `handin worker` runs) with a test-only
handler that works until the test lets it finish, sends SIGTERM while it is
inside the step, and sees the step succeed on its first attempt.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from core import keys
from core.queues import enqueue_step, job_exists
from core.settings import Settings
from tests.fixtures.pipeline import events, step_row
from tests.services import settings_env
from workers.base import completion_wait
from workers.run import WORKER_TASKS
from workers.runner import Outcome, StepContext

REPO = Path(__file__).resolve().parents[2]
# The test task's own time limit: short, so a worker that ignored the drain would fail fast.
TIME_LIMIT = 20
DRAIN_DIR_VARIABLE = "HANDIN_TEST_DRAIN_DIR"
WORKER_MODULE = "tests.integration.test_worker_drain"


async def slow_scan(ctx: StepContext) -> Outcome:
    """Says it started, then works until the test drops a `release` file next to the marker."""
    folder = Path(os.environ[DRAIN_DIR_VARIABLE])
    (folder / "started").write_text(str(ctx.submission.id))
    while True:  # another process drops the file: nothing to await but the disk
        if (folder / "release").exists():
            break
        await asyncio.sleep(0.05)
    return Outcome(result={"verdict": "clean", "drained": True})


def main() -> None:
    """The worker process: the scan task's real settings and runner around `slow_scan`."""
    from core.logs import configure_logging
    from workers.base import step_worker_settings
    from workers.run import serve

    configure_logging()
    serve("scan", step_worker_settings("scan", slow_scan))


@pytest.mark.parametrize("task", WORKER_TASKS)
def test_each_worker_waits_for_its_longest_job(task: str) -> None:
    settings_cls = importlib.import_module(f"workers.{task}").WorkerSettings
    longest = max(job.timeout_s for job in [*settings_cls.functions, *settings_cls.cron_jobs])
    assert settings_cls.job_completion_wait >= longest


def test_the_completion_wait_follows_the_time_limit_unless_overridden() -> None:
    from workers.base import step_function
    from workers.scan import handle

    settings = Settings(retries={"scan": {"timeout_seconds": 200}}, worker={"job_timeout_margin_seconds": 5})
    function = step_function("scan", handle, settings)
    assert completion_wait([function], [], settings) == 205
    settings.worker.job_completion_wait_seconds = 40
    assert completion_wait([function], [], settings) == 40


async def wait_until(
    condition: Any, what: str, log: Path, process: asyncio.subprocess.Process, within: float = 60
) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline or process.returncode is not None:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"{what} did not happen; worker log:\n{output}")
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_sigterm_lets_a_running_step_finish_instead_of_cancelling_it(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, tmp_path: Path
) -> None:
    drain = tmp_path / "drain"
    drain.mkdir()
    env = {
        **os.environ,
        **settings_env(settings),
        DRAIN_DIR_VARIABLE: str(drain),
        "HANDIN_RETRIES__SCAN__TIMEOUT_SECONDS": str(TIME_LIMIT),
        "HANDIN_WORKER__JOB_TIMEOUT_MARGIN_SECONDS": "1",
        "HANDIN_WORKER__HTTP_PORT": "0",
        "HANDIN_LOG_JSON": "false",
    }
    env.pop("HANDIN_WORKER__JOB_COMPLETION_WAIT_SECONDS", None)
    world = await factory.world()
    submission = await factory.submission(world, b"an essay whose scan is running when the pod is told to stop\n")
    await enqueue_step(arq_redis, "scan", submission.id)
    log = tmp_path / "worker.log"
    with log.open("ab") as out:
        worker = await asyncio.create_subprocess_exec(
            sys.executable, "-c", f"from {WORKER_MODULE} import main; main()", cwd=REPO, env=env, stdout=out, stderr=out
        )
    try:
        await wait_until(lambda: asyncio.to_thread((drain / "started").exists), "the step starting", log, worker)
        worker.send_signal(signal.SIGTERM)
        # arq has taken the signal (it stops taking jobs) while the step is still inside the handler.
        await wait_until(
            lambda: asyncio.to_thread(lambda: "allow_pick_jobs" in log.read_text()), "SIGTERM handling", log, worker
        )
        assert worker.returncode is None
        (drain / "release").touch()
        await asyncio.wait_for(worker.wait(), 60)
    finally:
        if worker.returncode is None:
            worker.kill()
            await worker.wait()

    row = await step_row(sessions, submission.id, "scan")
    assert (row.state, row.attempts, row.result["drained"]) == ("succeeded", 1, True)
    retrying = await events(sessions, keys.submission_topic(submission.id), "step.retrying")
    assert retrying == []
    assert not await job_exists(arq_redis, "scan", submission.id)
