"""The autoscaler against real Redis queues and a stand-in Kubernetes API server.

The API server is kmock's KubernetesEmulator (tests/fixtures/kube.py): a
third party we cannot run here, faked at the HTTP wire protocol so the
official `kubernetes` client is exercised for real.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest
from arq.connections import ArqRedis
from redis.asyncio import Redis

from autoscaler.leader import LeaseElector
from autoscaler.main import Autoscaler
from autoscaler.sources import QueueSource
from autoscaler.targets import KubernetesTarget
from core import keys
from core.queues import enqueue_step
from core.settings import Settings
from tests.conftest import TEST_REDIS_URL
from tests.fixtures.kube import DEPLOYMENTS, NAMESPACE, RELEASE_PREFIX, KubeApi

SCALE = "/apis/apps/v1/namespaces/handin-test/deployments/exam-worker-{}/scale"


def scaler_settings(**autoscaler: Any) -> Settings:
    return Settings(
        redis_url=TEST_REDIS_URL,
        autoscaler={
            "backend": "kubernetes",
            "namespace": NAMESPACE,
            "deployment_prefix": RELEASE_PREFIX,
            "pools": {"scan": {"target_wait_seconds": 10, "max_replicas": 8}},
            **autoscaler,
        },
    )


@pytest.fixture
async def arq_redis(redis: Redis) -> ArqRedis:
    from core.queues import connect

    client = await connect(TEST_REDIS_URL)
    yield client
    await client.aclose()


async def flood(arq_redis: ArqRedis, step: str, count: int, start: int = 1) -> None:
    for submission_id in range(start, start + count):
        await enqueue_step(arq_redis, step, submission_id)


async def test_queue_depths_are_read_in_one_round_trip(redis: Redis, arq_redis: ArqRedis) -> None:
    await flood(arq_redis, "scan", 5)
    await enqueue_step(arq_redis, "scan", 99, defer_seconds=600)
    # arq marks a job it is running with an in-progress key; the job stays in the queue.
    await redis.set(f"arq:in-progress:{keys.job_id('scan', 1)}", b"1")
    await redis.set(keys.completed_counter("scan"), 42)
    depths = await QueueSource(redis, ["scan", "store"]).read(time.time(), lead=60)
    scan = depths["scan"]
    assert (scan.ready, scan.running, scan.deferred, scan.due_soon, scan.completed) == (4, 1, 1, 0, 42)
    assert depths["store"].queued == 0


async def test_a_backlog_is_patched_onto_the_deployment_scale(redis: Redis, arq_redis: ArqRedis, kube: KubeApi) -> None:
    # 1,000 scan jobs at the io default of 20 jobs/s per replica, cleared within 10 s: 5 replicas.
    await flood(arq_redis, "scan", 1000)
    target = KubernetesTarget(kube.client(), NAMESPACE, RELEASE_PREFIX)
    scaler = Autoscaler(scaler_settings(), redis, None, target)

    decisions = await scaler.cycle()

    assert {d.task: d.desired for d in decisions}["scan"] == 5
    # The later steps expect those 1,000 jobs within the lead time (65 s), ~15.4 jobs/s:
    # load x 1.1 + sqrt(load) replicas: 2 for the io pools (20 jobs/s each), 21 for the
    # CPU-bound ones (1 job/s each), under their caps (similarity 200, thumbnail 100).
    assert kube.patches() == [
        (SCALE.format("scan"), {"spec": {"replicas": 5}}),
        (SCALE.format("store"), {"spec": {"replicas": 2}}),
        (SCALE.format("similarity"), {"spec": {"replicas": 21}}),
        (SCALE.format("admin"), {"spec": {"replicas": 2}}),
        (SCALE.format("receipt"), {"spec": {"replicas": 2}}),
        (SCALE.format("thumbnail"), {"spec": {"replicas": 21}}),
    ]
    assert kube.replicas("exam-worker-scan") == 5


async def test_dry_run_decides_but_changes_nothing(redis: Redis, arq_redis: ArqRedis, kube: KubeApi) -> None:
    await flood(arq_redis, "scan", 1000)
    scaler = Autoscaler(scaler_settings(), redis, None, KubernetesTarget(kube.client(), NAMESPACE, RELEASE_PREFIX))
    decisions = await scaler.cycle(dry_run=True)
    assert {d.task: d.desired for d in decisions}["scan"] == 5
    assert kube.patches() == []


async def test_a_failing_pool_is_logged_and_the_others_still_scale(
    redis: Redis, arq_redis: ArqRedis, kube: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    kube.emulator.objects[DEPLOYMENTS, NAMESPACE, "exam-worker-store"].delete()
    await flood(arq_redis, "scan", 1000)
    await flood(arq_redis, "receipt", 1000)
    scaler = Autoscaler(scaler_settings(), redis, None, KubernetesTarget(kube.client(), NAMESPACE, RELEASE_PREFIX))

    with caplog.at_level(logging.ERROR, logger="autoscaler"):
        decisions = await scaler.cycle()

    assert "store" not in {d.task for d in decisions}
    assert any(r.getMessage() == "pool cycle failed" and r.__dict__.get("pool") == "store" for r in caplog.records)
    patched = dict(kube.patches())
    assert patched[SCALE.format("scan")] == {"spec": {"replicas": 5}}
    assert patched[SCALE.format("receipt")] == {"spec": {"replicas": 2}}  # 1,000 jobs / (20/s x 30 s)


async def test_two_autoscalers_only_the_lease_holder_acts_and_a_standby_takes_over(
    redis: Redis, arq_redis: ArqRedis, kube: KubeApi
) -> None:
    now = [1_000_000.0]
    settings = scaler_settings()

    def clock() -> float:
        return now[0]

    def autoscaler(identity: str) -> tuple[Autoscaler, LeaseElector]:
        api = kube.client()
        elector = LeaseElector(api, NAMESPACE, "handin-autoscaler", identity, duration=15, clock=clock)
        target = KubernetesTarget(api, NAMESPACE, RELEASE_PREFIX)
        return Autoscaler(settings, redis, None, target, tasks=["scan"]), elector

    (first, first_lease), (second, second_lease) = autoscaler("first"), autoscaler("second")
    await flood(arq_redis, "scan", 200)

    await first.run(first_lease, once=True)
    await second.run(second_lease, once=True)
    assert kube.lease("handin-autoscaler")["spec"]["holderIdentity"] == "first"
    scale_patches = [p for p in kube.patches() if p[0].endswith("/scale")]
    assert scale_patches == []  # 200 jobs fit one replica: nobody needed to act on scale yet

    # More work arrives; the leader keeps renewing, the standby keeps out.
    await flood(arq_redis, "scan", 1800, start=1000)
    now[0] += 10
    await second.run(second_lease, once=True)
    assert [p for p in kube.patches() if p[0].endswith("/scale")] == []
    await first.run(first_lease, once=True)
    # 2,000 jobs want 10 replicas; the pool's maximum is 8.
    assert [p for p in kube.patches() if p[0].endswith("/scale")] == [(SCALE.format("scan"), {"spec": {"replicas": 8}})]

    # The leader stops (crashed, no release). The standby times the lease from when it saw the last
    # renewal, by its own clock (client-go's rule): it takes over one lease duration after that.
    now[0] += 14
    await second.run(second_lease, once=True)  # sees the renewal made at +10 for the first time
    assert kube.lease("handin-autoscaler")["spec"]["holderIdentity"] == "first"
    now[0] += 14
    await second.run(second_lease, once=True)
    assert kube.lease("handin-autoscaler")["spec"]["holderIdentity"] == "first"
    now[0] += 2
    # Someone scaled the pool down by hand meanwhile; the work is still there, so the new leader
    # (which learned the arrival rate from the shared state) puts it back.
    kube.add_deployment("exam-worker-scan", 2)
    scale_patches_before = len([p for p in kube.patches() if p[0].endswith("/scale")])
    await second.run(second_lease, once=True)
    lease = kube.lease("handin-autoscaler")["spec"]
    assert (lease["holderIdentity"], lease["leaseTransitions"]) == ("second", 1)
    assert [p for p in kube.patches() if p[0].endswith("/scale")][-1] == (
        SCALE.format("scan"),
        {"spec": {"replicas": 8}},
    )
    assert len([p for p in kube.patches() if p[0].endswith("/scale")]) == scale_patches_before + 1
    # The old leader, back again, finds a live lease held by another and stands by.
    assert await first_lease.acquire() is False
    lease_patches = [body for path, body in kube.patches() if "/leases/" in path]
    assert lease_patches[-1]["spec"]["holderIdentity"] == "second"
    assert all(set(body) <= {"spec", "metadata"} for body in lease_patches)


async def test_a_leader_past_its_renewal_deadline_decides_but_patches_nothing(
    redis: Redis, arq_redis: ArqRedis, kube: KubeApi, caplog: pytest.LogCaptureFixture
) -> None:
    now = [1_000_000.0]
    api = kube.client()
    elector = LeaseElector(api, NAMESPACE, "handin-autoscaler", "first", duration=15, clock=lambda: now[0], timeout=5)
    scaler = Autoscaler(
        scaler_settings(), redis, None, KubernetesTarget(api, NAMESPACE, RELEASE_PREFIX), tasks=["scan"]
    )
    scaler.elector = elector
    assert await elector.acquire()
    await flood(arq_redis, "scan", 1000)

    # The cycle ran late: 10 s after the renewal (15 s lease - 5 s call timeout) a standby may soon lead.
    now[0] += 10
    with caplog.at_level(logging.WARNING, logger="autoscaler"):
        decisions = await scaler.cycle()

    assert [d.desired for d in decisions] == [5]
    assert [p for p in kube.patches() if p[0].endswith("/scale")] == []
    assert any(r.getMessage() == "not applying: this autoscaler may no longer lead" for r in caplog.records)
