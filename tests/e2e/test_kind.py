"""The chart on a real kind cluster, in the order an operator lives it:
install → use → load → `helm test` → upgrade without downtime → uninstall.

Tests run in file order and share one release (see conftest.py).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import yaml

from core import keys
from core.pipeline import STEP_NAMES
from tests.e2e.cluster import Cluster
from tests.e2e.wamp_client import WampSubscriber

VALUES = yaml.safe_load((Path(__file__).parents[2] / "charts/handin/values.yaml").read_text())
FINAL_STATES = {"complete", "needs_attention", "quarantined"}
TERMINAL_STEP_TYPES = {"step.succeeded", "step.skipped", "step.failed"}
FLOODED_TASK = "thumbnail"


async def upload(client: httpx.AsyncClient, name: str = "essay.txt") -> dict:
    body = f"An essay on asynchronous systems, {time.time()}.\n".encode() * 50
    response = await client.post(
        f"/api/assignments/{VALUES['demo']['assignmentId']}/submissions",
        files={"file": (name, body, "text/plain")},
    )
    assert response.status_code == 202, response.text
    return response.json()


def test_every_component_is_ready(cluster: Cluster, release: str):
    deployments = {d["metadata"]["name"]: d for d in cluster.get("deployments")["items"]}
    for task in VALUES["workers"]:
        assert f"{release}-worker-{task}" in deployments
    for name in (f"{release}-api", f"{release}-router", f"{release}-autoscaler"):
        assert name in deployments
    for name, deployment in deployments.items():
        wanted = deployment["spec"].get("replicas", 1)
        assert deployment["status"].get("readyReplicas", 0) >= min(wanted, 1), name


async def test_upload_and_watch_every_step_finish_over_the_router(
    student: httpx.Client, api_url: str, router_url: str, public_origin: str
):
    # The student's cookies, Origin and CSRF token: the upload is a form post, as from the page.
    async with httpx.AsyncClient(
        base_url=api_url, cookies=student.cookies, headers=student.headers, timeout=30
    ) as client:
        ticket = (await client.get("/api/ws-ticket")).raise_for_status().json()["ticket"]
        subscriber = await WampSubscriber.open(router_url, ticket, origin=public_origin)
        try:
            accepted = await upload(client)
            await subscriber.subscribe(accepted["topic"])
            # Events published before SUBSCRIBED are fetched by seq, as the page does.
            history = (await client.get(f"/api/submissions/{accepted['id']}/events", params={"after": 0})).json()
            events = list(history["events"])
            live: list[dict] = []
            finished = {e["data"].get("step") for e in events if e["type"] in TERMINAL_STEP_TYPES}
            while finished < set(STEP_NAMES):
                event = await subscriber.next_event(wait_seconds=120)
                live.append(event)
                if event["type"] in TERMINAL_STEP_TYPES:
                    finished.add(event["data"]["step"])
        finally:
            await subscriber.close()
        assert live, "no event arrived over the WebSocket"
        seqs = sorted({e["seq"] for e in [*events, *live]})
        assert seqs == list(range(seqs[0], seqs[-1] + 1)), "a gap in the event sequence"
        deadline = time.monotonic() + 60
        while True:
            status = (await client.get(f"/api/submissions/{accepted['id']}")).json()
            if status["status"] in FINAL_STATES or time.monotonic() > deadline:
                break
            await asyncio.sleep(1)
        assert status["status"] == "complete", status


def _replicas(cluster: Cluster, deployment: str) -> int:
    return int(cluster.get("deployment", deployment)["spec"]["replicas"])


def test_a_flooded_queue_is_scaled_up_then_back_down(cluster: Cluster, release: str):
    deployment = f"{release}-worker-{FLOODED_TASK}"
    minimum = VALUES["workers"][FLOODED_TASK]["minReplicas"]
    assert _replicas(cluster, deployment) == minimum
    # Jobs for submissions that do not exist: real jobs on the real queue, each a quick no-op.
    flood = f"""
import asyncio
from core.queues import connect, enqueue_step
from core.settings import get_settings
async def main():
    redis = await connect(get_settings().redis_url)
    for offset in range(3000):
        await enqueue_step(redis, {FLOODED_TASK!r}, 900_000_000 + offset)
    print(await redis.zcard({keys.queue_name(FLOODED_TASK)!r}))
asyncio.run(main())
"""
    queued = int(cluster.exec_python(f"{release}-api", flood, timeout=300).strip().splitlines()[-1])
    assert queued > 0
    peak = cluster.wait_for(
        lambda: (replicas := _replicas(cluster, deployment)) > minimum and replicas,
        timeout=180,
        what=f"{deployment} to scale up",
    )
    assert peak <= VALUES["workers"][FLOODED_TASK]["maxReplicas"]
    cluster.wait_for(
        lambda: _replicas(cluster, deployment) == minimum,
        timeout=600,
        interval=5,
        what=f"{deployment} to scale back down to {minimum}",
    )


def test_helm_test_uploads_and_completes(cluster: Cluster, release: str):
    # Exits non-zero unless the test pod (files/smoke_test.py) saw its upload reach `complete`.
    output = cluster.helm_cmd("test", release, "--logs", "--timeout", "10m")
    assert "Succeeded" in output, output


def test_helm_upgrade_serves_every_request_and_keeps_autoscaled_replicas(cluster: Cluster, release: str):
    # Through the Service from a pod of the test's own: a port-forward follows one pod, which the rollout ends.
    with cluster.service_probe(f"http://{release}-api/healthz") as probed:
        cluster.install(release, "--set", "podAnnotations.handin\\.io/upgraded=yes")
    assert probed["served"] > 0
    assert probed["failed"] == 0, (
        f"{probed['failed']} of {probed['served']} requests failed during the upgrade: {probed}"
    )
    # What the autoscaler decided survives upgrades: autoscaled pools carry no replicas in the release.
    for manifest in yaml.safe_load_all(cluster.helm_cmd("get", "manifest", release)):
        if manifest and manifest["kind"] == "Deployment" and "handin.io/task" in manifest["metadata"]["labels"]:
            task = manifest["metadata"]["labels"]["handin.io/task"]
            assert ("replicas" in manifest["spec"]) == (VALUES["workers"][task]["scaling"] == "fixed"), task
    pods = cluster.get("pods", selector=f"app.kubernetes.io/instance={release},app.kubernetes.io/component=api")
    assert all(
        p["metadata"]["annotations"].get("handin.io/upgraded") == "yes"
        for p in pods["items"]
        if p["metadata"].get("deletionTimestamp") is None
    )


def test_helm_uninstall_leaves_nothing_behind(cluster: Cluster, release: str):
    cluster.helm_cmd("uninstall", release, "--wait", "--timeout", "5m")
    selector = f"app.kubernetes.io/instance={release}"
    left = cluster.wait_for(
        lambda: (
            not cluster.get("all,pvc,secrets,configmaps,roles,rolebindings,serviceaccounts", selector=selector)["items"]
            or None
        ),
        timeout=300,
        what="every labelled object to go",
    )
    assert left
