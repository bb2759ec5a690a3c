"""Each image, built with podman, starts its component read-only as its non-root user.

The api answers /healthz; the router welcomes a WAMP session with a real
ticket; a worker takes a real job from its queue (the plain worker image and the
documents one); the autoscaler runs a dry cycle and publishes its decision.
Each image also lacks what it does not need: no Kubernetes client in the api, no
Pillow outside the documents workers, no boto in the router or autoscaler.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect

from core import keys
from core.queues import enqueue_step
from core.settings import Settings
from tests.fixtures.pipeline import events, step_row, submission_row
from tests.images.conftest import Containers, image, podman, wait_until_listening
from tests.services import free_port, settings_env

# The first test's setup builds the images (minutes when cold, seconds when cached).
pytestmark = [pytest.mark.images, pytest.mark.timeout(3600)]
APP_UID = "10001"
JOB_TIMEOUT = 90.0


async def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + JOB_TIMEOUT
    while time.monotonic() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def container_env(settings: Settings) -> dict[str, str]:
    """The test's database, Redis and folders, with every listener on a free port of the host."""
    return {
        **settings_env(settings),
        "HANDIN_WORKER__HTTP_PORT": str(free_port()),
        "HANDIN_AUTOSCALER__HTTP_PORT": str(free_port()),
        "HANDIN_SECURITY__INTERNAL_PORT": str(free_port()),
    }


@pytest.mark.parametrize("name", ["api", "router", "autoscaler", "worker-scan", "worker-thumbnail"])
def test_images_run_as_a_non_root_user_on_a_read_only_root(containers: Containers, name: str) -> None:
    result = containers.run(name, "sh", "-c", "id -u; touch /opt/venv/x 2>&1; touch /tmp/x && echo tmp-writable")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == APP_UID
    assert "Read-only file system" in result.stdout
    assert lines[-1] == "tmp-writable"
    assert podman("image", "inspect", "--format", "{{.Config.User}}", image(name)).stdout.strip().startswith(APP_UID)


@pytest.mark.parametrize(
    ("name", "present", "absent"),
    [
        ("api", ["fastapi", "uvicorn", "aioboto3"], ["kubernetes", "PIL", "pypdfium2"]),
        ("router", ["websockets", "msgpack", "uvloop"], ["kubernetes", "PIL", "aioboto3", "fastapi"]),
        ("autoscaler", ["kubernetes"], ["PIL", "pypdfium2", "aioboto3", "fastapi"]),
        ("worker-scan", ["aioboto3", "aiosmtplib"], ["PIL", "pypdfium2", "kubernetes", "fastapi"]),
        ("worker-thumbnail", ["PIL", "pypdfium2", "defusedxml"], ["kubernetes", "fastapi"]),
    ],
)
def test_each_image_carries_only_what_its_component_needs(
    containers: Containers, name: str, present: list[str], absent: list[str]
) -> None:
    script = (
        "import importlib.util, json, sys\n"
        "def has(m):\n"
        "    try:\n"
        "        return importlib.util.find_spec(m) is not None\n"
        "    except ModuleNotFoundError:\n"
        "        return False\n"
        f"print(json.dumps({{m: has(m) for m in {present + absent!r}}}))\n"
    )
    result = containers.run(name, "python", "-c", script)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert [module for module in present if not found[module]] == [], f"{name} lacks what it needs"
    assert [module for module in absent if found[module]] == [], f"{name} carries what it does not need"
    # The installers left with the build stage.
    assert containers.run(name, "python", "-c", "import pip").returncode != 0


@pytest.mark.parametrize(
    ("name", "modules"),
    [
        ("api", ["api.main"]),
        ("router", ["router.server"]),
        ("autoscaler", ["autoscaler.main", "autoscaler.history"]),
        ("worker-scan", ["workers.scan", "workers.store", "workers.admin", "workers.receipt", "workers.maintenance"]),
        ("worker-thumbnail", ["workers.thumbnail", "workers.similarity", "core.similarity.winnowing"]),
    ],
)
def test_every_process_an_image_serves_imports_in_it(containers: Containers, name: str, modules: list[str]) -> None:
    """A dependency only the dev extra carries shows here, not at 3 a.m. in a crash-looping pod."""
    result = containers.run(name, "python", "-c", "; ".join(f"import {module}" for module in modules))
    assert result.returncode == 0, result.stderr


def test_documents_worker_image_draws_previews_from_its_glyph_atlas(containers: Containers) -> None:
    # The monospaced face is installed: text previews take the cached-glyph path, not Pillow's per-glyph one.
    check = "from workers import documents; assert documents._atlas(10)"
    result = containers.run("worker-thumbnail", "python", "-c", check)
    assert result.returncode == 0, result.stderr


async def test_api_image_answers_healthz(containers: Containers, settings: Settings) -> None:
    port = free_port()
    api = containers.start(
        "api", "handin", "api", "--host", "127.0.0.1", "--port", str(port), env=container_env(settings)
    )
    await asyncio.to_thread(wait_until_listening, api, port)
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{port}/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_router_image_welcomes_a_wamp_session_with_a_real_ticket(
    containers: Containers, settings: Settings, redis: Any, wamp_world: Any
) -> None:
    port, health = free_port(), free_port()
    command = ["handin", "router", "--host", "127.0.0.1", "--port", str(port), "--health-port", str(health)]
    router = containers.start("router", *command, env=container_env(settings))  # as the chart runs it
    await asyncio.to_thread(wait_until_listening, router, port)
    await asyncio.to_thread(wait_until_listening, router, health)
    async with httpx.AsyncClient(timeout=10) as client:
        assert (await client.get(f"http://127.0.0.1:{health}/healthz")).text == "ok\n"
    user = await wamp_world.user("student")
    ticket = await wamp_world.login(user)

    async with connect(f"ws://127.0.0.1:{port}/ws", subprotocols=["wamp.2.json"]) as socket:  # type: ignore[list-item]
        await socket.send(json.dumps([1, "handin", {"roles": {"subscriber": {}}, "authmethods": ["ticket"]}]))
        challenge = json.loads(await asyncio.wait_for(socket.recv(), 10))
        assert challenge[0] == 4, challenge  # CHALLENGE
        await socket.send(json.dumps([5, ticket, {}]))
        welcome = json.loads(await asyncio.wait_for(socket.recv(), 10))
    assert welcome[0] == 2, welcome  # WELCOME
    assert welcome[2]["authid"] == str(user)


async def test_worker_image_takes_a_job_from_its_queue(
    containers: Containers, settings: Settings, factory: Any, sessions: Any, arq_redis: Any, tmp_path: Any
) -> None:
    """The scan worker (no scanner configured): the step is skipped, shown as such, and store is queued."""
    world = await factory.world()
    submission = await factory.submission(world, b"an essay for the container\n")
    await enqueue_step(arq_redis, "scan", submission.id)

    containers.start("worker-scan", env=container_env(settings), volumes=[tmp_path])

    async def scanned() -> bool:
        return (await step_row(sessions, submission.id, "scan")).state == "skipped"

    await wait_for(scanned, "the scan step to be taken by the containerised worker")
    assert (await step_row(sessions, submission.id, "store")).state == "queued"


async def test_documents_worker_image_renders_a_thumbnail(
    containers: Containers, settings: Settings, factory: Any, sessions: Any, arq_redis: Any, tmp_path: Any
) -> None:
    """The thumbnail worker, Pillow and all: the step succeeds and the preview is stored."""
    world = await factory.world()
    submission = await factory.stored_submission(
        world, b"Dear reader,\nthis essay has a thumbnail.\n", step="thumbnail", arq_redis=arq_redis
    )

    containers.start("worker-thumbnail", env=container_env(settings), volumes=[tmp_path])

    async def rendered() -> bool:
        return (await step_row(sessions, submission.id, "thumbnail")).state == "succeeded"

    await wait_for(rendered, "the thumbnail step to succeed in the containerised worker")
    key = (await submission_row(sessions, submission.id)).thumbnail_key
    assert key and settings.storage.thumbnails_dir is not None
    assert (settings.storage.thumbnails_dir / key).read_bytes().startswith(b"\x89PNG")


async def test_autoscaler_image_runs_a_dry_cycle_and_publishes_its_decision(
    containers: Containers, settings: Settings, sessions: Any, redis: Any
) -> None:
    env = {**container_env(settings), "HANDIN_AUTOSCALER__BACKEND": "local"}
    result = await asyncio.to_thread(
        containers.run, "autoscaler", "handin", "autoscaler", "--once", "--dry-run", env=env
    )
    assert result.returncode == 0, result.stdout + result.stderr
    decisions = await events(sessions, keys.FLEET_TOPIC, "autoscaler.decision")
    assert len(decisions) == 1
    assert decisions[0].data["dry_run"] is True
    assert {pool["pool"] for pool in decisions[0].data["pools"]} >= set(keys.TASKS)
