"""Redis restarted mid-pipeline (without persistence): the queues are gone, no submission is.

A Redis server of this test's own is killed and started again empty on the
same port while submissions are in flight.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.settings import Settings
from tests.fixtures.pipeline import drain_pipeline, step_states, submission_row
from tests.services import start_redis_server
from workers.reconcile import reconcile_once


class RestartableRedis:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.process, self.url = start_redis_server(directory)
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def restart(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()
        self.process, _ = start_redis_server(self.directory, self.port)

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()


@pytest.fixture(autouse=True)
def own_redis(settings: Settings, tmp_path: Path) -> Iterator[RestartableRedis]:
    server = RestartableRedis(tmp_path / "redis")
    settings.redis_url = server.url
    settings.worker.reconcile_grace_seconds = 0
    yield server
    server.stop()


async def test_restart_loses_no_submission(
    own_redis: RestartableRedis, as_user: Any, world: Any, sessions: Any, settings: Settings, run_burst: Any
) -> None:
    student = await as_user("student")
    url = f"/api/assignments/{world.assignment_id}/submissions"
    first = await student.post(url, files={"file": ("one.txt", b"first essay, queued before the restart\n" * 20)})
    assert first.status_code == 202

    own_redis.restart()  # the queued scan job is gone with it

    # The api's connections come back by themselves: the next upload is taken as usual.
    second = await student.post(url, files={"file": ("two.txt", b"second essay, after the restart\n" * 20)})
    assert second.status_code == 202, second.text

    report = await reconcile_once(settings)
    assert report is not None
    await drain_pipeline(run_burst)

    for answer in (first, second):
        submission_id = answer.json()["id"]
        assert (await submission_row(sessions, submission_id)).status == "complete"
        states = await step_states(sessions, submission_id)
        assert states["store"] == "succeeded" and states["thumbnail"] == "succeeded"
