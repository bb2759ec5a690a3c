"""The honest wait: a queued step's place in its arq queue and when it may be done, from the autoscaler's figures.

Real Redis, real arq queues, a real database and the real autoscaler writing
its saved state; no worker runs, so the steps stay queued.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

import httpx
import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.main import Autoscaler
from core import keys
from core.clock import utcnow
from core.models import SubmissionStep
from core.settings import Settings
from tests.fixtures.app import World
from tests.fixtures.fleet import Fleet

pytestmark = pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
Login = Callable[[str], Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def queue(app: FastAPI) -> ArqRedis:
    """The app's own arq pool: what it enqueues on is what we fill."""
    pool: ArqRedis = app.state.redis
    return pool


async def fill(queue: ArqRedis, step: str, jobs: int) -> None:
    """Other submissions' jobs, enqueued before ours (each a millisecond apart, a minute ago)."""
    start = utcnow() - timedelta(minutes=1)
    for n in range(jobs):
        job = await queue.enqueue_job(
            step,
            100_000 + n,
            _job_id=keys.job_id(step, 100_000 + n),
            _queue_name=keys.queue_name(step),
            _defer_until=start + timedelta(milliseconds=n),
        )
        assert job is not None


async def upload(student: httpx.AsyncClient, world: World) -> int:
    answer = await student.post(
        f"/api/assignments/{world.assignment_id}/submissions",
        files={"file": ("essay.txt", b"An essay of my own words. " * 40, "text/plain")},
    )
    assert answer.status_code == 202, answer.text
    submission_id: int = answer.json()["id"]
    return submission_id


async def scan_state(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> str:
    async with sessions() as session:
        state: str = await session.scalar(
            select(SubmissionStep.state).where(
                SubmissionStep.submission_id == submission_id, SubmissionStep.step == "scan"
            )
        )
    return state


async def test_position_and_estimate_behind_queued_jobs_with_the_autoscalers_drain_rate(
    as_user: Login, world: World, queue: ArqRedis, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await fill(queue, "scan", 12)
    student = await as_user("student")
    submission_id = await upload(student, world)
    assert await scan_state(sessions, submission_id) == "queued"
    # The autoscaler's own cycle measures nothing here: the scan pool's rate is configured, 3 jobs/s a replica.
    settings.autoscaler.pools.scan.drain_rate_per_replica = 3.0
    fleet = Fleet(keys.TASKS, 1)
    fleet.replicas["scan"] = 2
    await Autoscaler(settings, queue, sessions, fleet, tasks=["scan"]).cycle(dry_run=True)

    answer = await student.get(f"/api/submissions/{submission_id}/wait")

    assert answer.status_code == 200, answer.text
    view = answer.json()
    assert view["waiting"] is True
    (scan,) = view["steps"]
    assert (scan["step"], scan["state"], scan["position"], scan["ahead"], scan["in_queue"]) == (
        "scan",
        "queued",
        13,
        12,
        13,
    )
    assert scan["position_text"] == "13th of 13 in the queue for the virus scan."
    assert (scan["replicas"], scan["drain_rate"]) == (2, 6.0)
    # 12 jobs ahead at 6 jobs/s, then its own run: max_jobs slots share 3 jobs/s.
    expected = 12 / 6 + settings.worker.max_jobs / 3
    estimate = scan["estimate"]
    assert estimate["expected_seconds"] == pytest.approx(expected, abs=0.1)
    assert estimate["low_seconds"] < estimate["expected_seconds"] < estimate["high_seconds"]
    assert estimate["measured"] is True
    assert estimate["text"].startswith("Estimate: ")
    assert view["estimate"] == estimate
    assert scan["workers_starting"] is False and scan["workers_text"] is None

    # Course staff see the same; another student of the course does not learn it exists.
    (seen,) = (await (await as_user("staff")).get(f"/api/submissions/{submission_id}/wait")).json()["steps"]
    assert (seen["position_text"], seen["estimate"]["text"]) == (scan["position_text"], estimate["text"])
    other = await (await as_user("student2")).get(f"/api/submissions/{submission_id}/wait")
    assert other.status_code == 404


async def test_without_the_autoscalers_figures_the_declared_default_gives_a_wider_range(
    as_user: Login, world: World, queue: ArqRedis, settings: Settings
) -> None:
    await fill(queue, "scan", 40)
    student = await as_user("student")
    submission_id = await upload(student, world)

    (scan,) = (await student.get(f"/api/submissions/{submission_id}/wait")).json()["steps"]

    assert scan["position"] == 41
    assert scan["drain_rate"] == settings.autoscaler.default_drain_rate_io  # one replica, the io default
    estimate = scan["estimate"]
    assert estimate["measured"] is False
    rate = settings.autoscaler.default_drain_rate_io
    expected = 40 / rate + settings.worker.max_jobs / rate
    assert estimate["expected_seconds"] == pytest.approx(expected, abs=0.1)
    assert estimate["high_seconds"] == pytest.approx(2 * expected, abs=0.1)


async def test_the_page_is_told_when_the_autoscalers_last_decision_starts_more_workers(
    as_user: Login, world: World, queue: ArqRedis, settings: Settings, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await fill(queue, "scan", 300)
    student = await as_user("student")
    submission_id = await upload(student, world)
    settings.autoscaler.pools.scan.drain_rate_per_replica = 1.0
    fleet = Fleet(keys.TASKS, 1)
    scaler = Autoscaler(settings, queue, sessions, fleet, tasks=["scan"])
    # 301 jobs at 1 job/s on one replica: the autoscaler asks for more (dry run: none start here).
    (decision,) = await scaler.cycle(dry_run=True)
    assert decision.desired > decision.current == 1

    view = (await student.get(f"/api/submissions/{submission_id}/wait")).json()

    (scan,) = view["steps"]
    assert view["workers_starting"] is True and scan["workers_starting"] is True
    assert scan["workers_text"] == "More workers are starting to clear the queue."
    # The fast end counts the replicas asked for; the expected time only those running now.
    estimate = scan["estimate"]
    assert estimate["expected_seconds"] == pytest.approx(300 + settings.worker.max_jobs, abs=0.5)
    assert estimate["low_seconds"] < 300 / decision.desired + settings.worker.max_jobs
    assert "minutes" in estimate["text"]
