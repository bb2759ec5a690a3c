"""A worker process killed with SIGKILL mid-step: after a new worker starts, the step completes exactly once.

Real processes (`python -m core.cli worker scan`, configured through HANDIN_*
variables), real clamd behind a relay that holds the first scan's connection
open, so the worker is killed while it is inside the step.
"""

from __future__ import annotations

import asyncio
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
from core.storage import Area, make_storage
from tests.fixtures.clamd import Clamd, ClamdProxy
from tests.fixtures.pipeline import events, step_row
from tests.services import settings_env
from workers import store
from workers.reconcile import reconcile

REPO = Path(__file__).resolve().parents[2]
STEP_TIME_LIMIT = 4


def worker_env(settings: Settings, clamd_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update(settings_env(settings))
    env.update(
        {
            "HANDIN_SCANNER__CLAMD_HOST": "127.0.0.1",
            "HANDIN_SCANNER__CLAMD_PORT": str(clamd_port),
            "HANDIN_SCANNER__TIMEOUT_SECONDS": "60",
            "HANDIN_RETRIES__SCAN__TIMEOUT_SECONDS": str(STEP_TIME_LIMIT),
            # A killed worker's job stays locked for arq's timeout + 10 s: keep that short here.
            "HANDIN_WORKER__JOB_TIMEOUT_MARGIN_SECONDS": "1",
            "HANDIN_WORKER__POLL_DELAY_SECONDS": "0.05",
            "HANDIN_WORKER__HTTP_PORT": "0",
            "HANDIN_LOG_JSON": "false",
        }
    )
    return env


async def start_worker(task: str, env: dict[str, str], log: Path) -> asyncio.subprocess.Process:
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-m", "core.cli", "worker", task, cwd=REPO, env=env, stdout=out, stderr=out
        )


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()


def files_under(root: Path) -> list[Path]:
    return [path for path in root.rglob("*") if path.is_file()]


async def wait_for_state(sessions: Any, submission_id: int, step: str, state: str, within: float, log: Path) -> None:
    deadline = time.monotonic() + within
    while (row := await step_row(sessions, submission_id, step)).state != state:
        if time.monotonic() > deadline:
            output = await asyncio.to_thread(log.read_text)
            raise AssertionError(f"{step} is {row.state}, not {state}; worker log:\n{output}")
        await asyncio.sleep(0.2)


# Killed once the page could have seen the step running (its start written), or as soon as the scan
# is under way: on PostgreSQL a first delivery's start is then most likely still owed to its end.
@pytest.mark.parametrize("kill", ["once shown running", "at once"])
async def test_a_worker_killed_mid_step_leaves_a_step_that_completes_exactly_once(
    factory: Any,
    settings: Settings,
    sessions: Any,
    arq_redis: Any,
    run_burst: Any,
    clamd: Clamd,
    tmp_path: Path,
    kill: str,
) -> None:
    proxy = ClamdProxy(clamd)
    await proxy.start()
    proxy.stall_next(1)
    env = worker_env(settings, proxy.port)
    log = tmp_path / "workers.log"
    world = await factory.world()
    content = b"an essay whose scan outlives its worker\n" * 100
    submission = await factory.submission(world, content)
    await enqueue_step(arq_redis, "scan", submission.id)
    processes: list[asyncio.subprocess.Process] = []
    try:
        first = await start_worker("scan", env, log)
        processes.append(first)
        await asyncio.wait_for(proxy.stalled.wait(), 60)  # the worker is inside the scan now
        if kill == "once shown running":
            await wait_for_state(sessions, submission.id, "scan", "running", 10, log)
            assert (await step_row(sessions, submission.id, "scan")).attempts == 1

        first.kill()
        await first.wait()

        # The dead worker's job is still locked in Redis: nobody may run it twice meanwhile.
        assert await job_exists(arq_redis, "scan", submission.id)
        assert (await reconcile(sessions, arq_redis, settings, grace_seconds=0)).requeued == []

        second = await start_worker("scan", env, log)
        processes.append(second)
        await wait_for_state(sessions, submission.id, "scan", "succeeded", 60, log)
    finally:
        for process in processes:
            await stop(process)
        await proxy.stop()

    await run_burst("store", store.handle)

    scanned = await step_row(sessions, submission.id, "scan")
    # The second delivery is the second attempt, whether or not the first lived to record its start.
    assert (scanned.attempts, scanned.result["verdict"]) == (2, "clean")
    topic = keys.submission_topic(submission.id)
    succeeded = [e.data["step"] for e in await events(sessions, topic, "step.succeeded")]
    assert succeeded == ["scan", "store"]  # each exactly once
    running = [e.data["attempt"] for e in await events(sessions, topic, "step.running") if e.data["step"] == "scan"]
    if kill == "once shown running":
        assert running == [1, 2]
    else:
        assert running[-1:] == [2]
    storage = make_storage(settings)
    assert await storage.exists(Area.store, submission.storage_key)
    assert not await storage.exists(Area.incoming, submission.storage_key)
    assert len(files_under(Path(settings.storage.root))) == 1
