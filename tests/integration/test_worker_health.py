"""A worker's /healthz tells the truth: 503 while its event loop is stuck or its Redis is gone.

Real worker processes (`workers.run.serve`, what `handin worker` runs) with a
test-only task: `block` holds the event loop with `time.sleep` until the test
drops a file, as a job doing CPU work on the loop would; `touch` writes a file,
to see the worker take jobs again. Before, the Prometheus thread answered
/healthz with 200 whatever the loop or Redis were doing.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import func
from arq.connections import ArqRedis

from core.queues import connect
from core.settings import Settings
from tests.services import free_port, settings_env, start_redis_server

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)

REPO = Path(__file__).resolve().parents[2]
WORKER_MODULE = "tests.integration.test_worker_health"
TASK = "healthprobe"
QUEUE = f"handin:queue:{TASK}"
FOLDER_VARIABLE = "HANDIN_TEST_HEALTH_DIR"
STALE_SECONDS = 1


async def block(ctx: dict[str, Any]) -> None:
    """Blocks the worker's event loop (sync sleeps, no await) until `release` exists."""
    folder = Path(os.environ[FOLDER_VARIABLE])
    (folder / "blocking").touch()
    while not (folder / "release").exists():
        time.sleep(0.05)  # noqa: ASYNC251 - blocking the loop is what this job is for


async def touch(ctx: dict[str, Any], name: str) -> None:
    (Path(os.environ[FOLDER_VARIABLE]) / name).touch()


def main() -> None:
    from core.logs import configure_logging
    from workers.base import worker_settings
    from workers.run import serve

    configure_logging()
    functions = [func(block, name="block", timeout=60), func(touch, name="touch", timeout=10)]
    serve(TASK, worker_settings(TASK, functions))


@dataclass
class RunningWorker:
    process: asyncio.subprocess.Process
    url: str
    folder: Path
    log: Path

    async def wait_for(self, condition: Callable[[httpx.Response], bool], what: str, within: float = 60) -> str:
        """Polls /healthz until `condition` holds for its answer; returns the body."""
        deadline = time.monotonic() + within
        last = "no answer yet"
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    response = await client.get(f"{self.url}/healthz")
                except httpx.HTTPError as error:
                    last = repr(error)
                else:
                    last = f"{response.status_code} {response.text.strip()}"
                    if condition(response):
                        return response.text
                if time.monotonic() > deadline or self.process.returncode is not None:
                    output = await asyncio.to_thread(self.log.read_text)
                    raise AssertionError(f"{what}: last /healthz was {last}; worker log:\n{output}")
                await asyncio.sleep(0.1)

    async def wait_for_file(self, name: str, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while not await asyncio.to_thread((self.folder / name).exists):
            if time.monotonic() > deadline or self.process.returncode is not None:
                output = await asyncio.to_thread(self.log.read_text)
                raise AssertionError(f"{name} never appeared; worker log:\n{output}")
            await asyncio.sleep(0.05)


def healthy(response: httpx.Response) -> bool:
    return response.status_code == 200


def failing(reason: str) -> Callable[[httpx.Response], bool]:
    return lambda response: response.status_code == 503 and reason in response.text


@pytest.fixture
def start_worker(tmp_path: Path) -> Iterator[Callable[[Settings], Any]]:
    processes: list[asyncio.subprocess.Process] = []

    async def start(settings: Settings) -> RunningWorker:
        folder = tmp_path / f"worker{len(processes)}"
        folder.mkdir()
        port = free_port()
        env = {
            **os.environ,
            **settings_env(settings),
            FOLDER_VARIABLE: str(folder),
            "HANDIN_WORKER__HTTP_PORT": str(port),
            "HANDIN_WORKER__HEALTH_STALE_SECONDS": str(STALE_SECONDS),
            "HANDIN_WORKER__POLL_DELAY_SECONDS": "0.05",
            "HANDIN_LOG_JSON": "false",
        }
        log = folder / "worker.log"
        with log.open("ab") as out:
            process = await asyncio.create_subprocess_exec(
                sys.executable, "-c", f"from {WORKER_MODULE} import main; main()", cwd=REPO, env=env, stdout=out,
                stderr=out,
            )  # fmt: skip
        processes.append(process)
        return RunningWorker(process, f"http://127.0.0.1:{port}", folder, log)

    yield start
    for process in processes:
        if process.returncode is None:
            process.kill()


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[Any]:
    class Server:
        def __init__(self) -> None:
            self.process, self.url = start_redis_server(tmp_path / "redis")
            self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

        def stop(self) -> None:
            self.process.kill()
            self.process.wait()

        def start(self) -> None:
            self.process, _ = start_redis_server(tmp_path / "redis", self.port)

    server = Server()
    yield server
    server.stop()


async def stop(worker: RunningWorker) -> None:
    worker.process.send_signal(signal.SIGTERM)
    await asyncio.wait_for(worker.process.wait(), 60)


async def test_healthz_is_503_while_a_job_blocks_the_event_loop(
    settings: Settings, arq_redis: ArqRedis, start_worker: Any
) -> None:
    worker: RunningWorker = await start_worker(settings)
    await worker.wait_for(healthy, "a fresh worker is healthy")
    async with httpx.AsyncClient() as client:
        metrics = await client.get(f"{worker.url}/metrics")
    assert metrics.status_code == 200 and "python_info" in metrics.text  # Prometheus still scrapes this port

    await arq_redis.enqueue_job("block", _queue_name=QUEUE)
    await worker.wait_for_file("blocking")
    body = await worker.wait_for(failing("event loop"), "a blocked loop is reported")
    assert "no turn for" in body

    (worker.folder / "release").touch()
    await worker.wait_for(healthy, "the loop turns again")
    await stop(worker)


async def test_healthz_is_503_while_redis_is_down_and_200_once_it_is_back(
    settings: Settings, start_worker: Any, private_redis: Any
) -> None:
    settings.redis_url = private_redis.url
    worker: RunningWorker = await start_worker(settings)
    await worker.wait_for(healthy, "a fresh worker is healthy")

    private_redis.stop()
    body = await worker.wait_for(failing("redis"), "lost Redis is reported")
    assert "event loop" not in body  # the loop itself is fine

    private_redis.start()
    await worker.wait_for(healthy, "Redis back")
    # The same process takes jobs again: it did not die with its connection.
    pool = await connect(private_redis.url)
    try:
        await pool.enqueue_job("touch", "after-outage", _queue_name=QUEUE)
        await worker.wait_for_file("after-outage")
    finally:
        await pool.aclose()
    await stop(worker)
