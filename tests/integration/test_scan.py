"""The scan step against a real clamd (EICAR signature written locally), then the store step."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from redis.asyncio import Redis

from core import keys
from core.pipeline import STEP_NAMES
from core.queues import enqueue_step, job_exists
from core.settings import Settings
from core.storage import Area, make_storage
from tests.fixtures.clamd import CLAMD_STREAM_MAX, EICAR, EICAR_SIGNATURE_NAME, Clamd, ClamdProxy, free_port
from tests.fixtures.conditions import subscribed
from tests.fixtures.pipeline import events, quick_retries, step_events, step_row, step_states, submission_row
from workers import scan, store
from workers.clamd import ClamdClient

FAN_OUT = ("similarity", "admin", "receipt", "thumbnail")


def use_clamd(settings: Settings, clamd: Clamd, *, port: int | None = None) -> None:
    settings.scanner.clamd_host = clamd.host
    settings.scanner.clamd_port = port or clamd.port
    settings.scanner.timeout_seconds = 5


async def test_clamd_client_speaks_ping_and_instream(clamd: Clamd) -> None:
    client = ClamdClient(host=clamd.host, port=clamd.port, timeout=5)
    assert await client.ping()
    assert (await client.version()).startswith("ClamAV")

    async def chunks() -> Any:
        yield b"harmless "
        yield b"text"

    assert not (await client.instream(chunks())).infected

    async def eicar() -> Any:
        yield EICAR[:10]
        yield EICAR[10:]

    verdict = await client.instream(eicar())
    assert verdict.infected and verdict.signature is not None
    assert verdict.signature.startswith(EICAR_SIGNATURE_NAME)

    # In one session: the verdict and the engine that gave it, each answer unnumbered.
    clean, engine = await client.scan(chunks())
    assert not clean.infected and clean.reply == "stream: OK" and engine == await client.version()
    found, engine = await client.scan(eicar())
    assert found.infected and (found.signature or "").startswith(EICAR_SIGNATURE_NAME) and engine.startswith("ClamAV")


async def test_a_file_is_scanned_and_its_engine_asked_on_one_connection(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd
) -> None:
    proxy = ClamdProxy(clamd)
    await proxy.start()
    use_clamd(settings, clamd, port=proxy.port)
    world = await factory.world()
    submissions = [await factory.submission(world, f"essay {n}\n".encode() * 200) for n in range(3)]
    for submission in submissions:
        await enqueue_step(arq_redis, "scan", submission.id)
    try:
        await run_burst("scan", scan.handle)
    finally:
        await proxy.stop()

    for submission in submissions:
        scanned = await step_row(sessions, submission.id, "scan")
        assert (scanned.state, scanned.result["verdict"]) == ("succeeded", "clean")
        assert scanned.result["engine"].startswith("ClamAV")
    assert proxy.connections == len(submissions)


async def test_clean_file_is_scanned_then_stored_with_its_checksum_verified(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd
) -> None:
    use_clamd(settings, clamd)
    world = await factory.world()
    content = b"A perfectly ordinary essay.\n" * 500
    submission = await factory.submission(world, content)
    await enqueue_step(arq_redis, "scan", submission.id)

    await run_burst("scan", scan.handle)

    scanned = await step_row(sessions, submission.id, "scan")
    assert scanned.state == "succeeded"
    assert scanned.result["verdict"] == "clean"
    assert scanned.result["engine"].startswith("ClamAV")
    assert (await step_row(sessions, submission.id, "store")).state == "queued"

    await run_burst("store", store.handle)

    stored = await step_row(sessions, submission.id, "store")
    assert stored.state == "succeeded", stored.error
    assert stored.result == {"sha256": submission.sha256, "size": len(content), "verified": True}
    storage = make_storage(settings)
    assert await storage.exists(Area.store, submission.storage_key)
    assert not await storage.exists(Area.incoming, submission.storage_key)
    assert not await storage.exists(Area.quarantine, submission.storage_key)
    kept = b"".join([chunk async for chunk in storage.open(Area.store, submission.storage_key)])
    assert hashlib.sha256(kept).hexdigest() == submission.sha256
    # The four parallel steps are queued, each with its job waiting on its own queue.
    states = await step_states(sessions, submission.id)
    assert {name: states[name] for name in FAN_OUT} == dict.fromkeys(FAN_OUT, "queued")
    for name in FAN_OUT:
        assert await job_exists(arq_redis, name, submission.id)
    assert await step_events(sessions, submission.id, "scan") == ["step.running", "step.succeeded"]


async def test_scan_over_the_unix_socket(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd
) -> None:
    settings.scanner.clamd_socket = clamd.socket_path
    world = await factory.world()
    submission = await factory.submission(world, b"scanned through a unix socket\n")
    await enqueue_step(arq_redis, "scan", submission.id)
    await run_burst("scan", scan.handle)
    assert (await step_row(sessions, submission.id, "scan")).result["verdict"] == "clean"


async def _collect(redis: Redis, channels: list[str], into: list[dict[str, Any]], ready: asyncio.Event) -> None:
    pubsub = await subscribed(redis, *channels)
    ready.set()
    try:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                into.append(json.loads(message["data"]))
    finally:
        await pubsub.aclose()


async def test_eicar_is_quarantined_never_stored_and_student_and_staff_are_told(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd, redis: Redis
) -> None:
    use_clamd(settings, clamd)
    world = await factory.world()
    submission = await factory.submission(world, b"my homework\n" + EICAR + b"\n", filename="homework.txt")
    heard: list[dict[str, Any]] = []
    ready = asyncio.Event()
    staff_topic = keys.course_staff_topic(world.course.id)
    channels = [keys.events_channel(keys.user_topic(world.student.id)), keys.events_channel(staff_topic)]
    listener = asyncio.create_task(_collect(redis, channels, heard, ready))
    await ready.wait()
    try:
        await enqueue_step(arq_redis, "scan", submission.id)
        await run_burst("scan", scan.handle)
        # Even a store job delivered by mistake must not store a quarantined file.
        await enqueue_step(arq_redis, "store", submission.id)
        await run_burst("store", store.handle)
        for _ in range(50):
            if len(heard) >= 2:
                break
            await asyncio.sleep(0.05)
    finally:
        listener.cancel()
        await asyncio.gather(listener, return_exceptions=True)

    scanned = await step_row(sessions, submission.id, "scan")
    assert scanned.result["verdict"] == "infected"
    assert scanned.result["signature"].startswith(EICAR_SIGNATURE_NAME)
    states = await step_states(sessions, submission.id)
    assert states == {"scan": "succeeded", **{name: "skipped" for name in STEP_NAMES if name != "scan"}}
    assert (await submission_row(sessions, submission.id)).status == "quarantined"

    storage = make_storage(settings)
    assert await storage.exists(Area.quarantine, submission.storage_key)
    assert not await storage.exists(Area.store, submission.storage_key)
    assert not await storage.exists(Area.incoming, submission.storage_key)

    topic = keys.submission_topic(submission.id)
    assert [e.data["result"]["verdict"] for e in await events(sessions, topic, "step.succeeded")] == ["infected"]
    assert len(await events(sessions, topic, "submission.quarantined")) == 1
    flashes = await events(sessions, keys.user_topic(world.student.id), "flash")
    assert len(flashes) == 1
    assert flashes[0].data["kind"] == "error"
    assert "homework.txt" in flashes[0].data["text"]
    assert "quarantined" in flashes[0].data["text"] and "not been stored or sent anywhere" in flashes[0].data["text"]
    dashboard = await events(sessions, staff_topic, "submission.quarantined")
    assert [e.data["submission_id"] for e in dashboard] == [submission.id]
    # Both were pushed live, not only written to the audit trail.
    assert {(e["topic"], e["type"]) for e in heard} >= {
        (keys.user_topic(world.student.id), "flash"),
        (staff_topic, "submission.quarantined"),
    }


async def test_without_a_scanner_the_step_is_skipped_not_clean_and_the_file_is_stored(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    assert not settings.scanner.configured
    world = await factory.world()
    submission = await factory.submission(world, b"nobody scanned me\n")
    await enqueue_step(arq_redis, "scan", submission.id)

    await run_burst("scan", scan.handle)
    await run_burst("store", store.handle)

    scanned = await step_row(sessions, submission.id, "scan")
    assert scanned.state == "skipped"
    assert scanned.result == {"verdict": "not scanned", "reason": "no scanner configured"}
    assert (await step_row(sessions, submission.id, "store")).state == "succeeded"
    assert await make_storage(settings).exists(Area.store, submission.storage_key)


async def test_clamd_unreachable_is_retried_and_succeeds_once_it_is_back(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd
) -> None:
    port = free_port()  # nothing listens here yet
    use_clamd(settings, clamd, port=port)
    quick_retries(settings, "scan", max_tries=3, delay_seconds=0.1)
    world = await factory.world()
    submission = await factory.submission(world, b"scan me when you can\n")
    await enqueue_step(arq_redis, "scan", submission.id)

    await run_burst("scan", scan.handle, max_burst_jobs=1)
    waiting = await step_row(sessions, submission.id, "scan")
    assert waiting.state == "retrying"
    assert "virus scanner unavailable" in (waiting.error or "")
    assert await job_exists(arq_redis, "scan", submission.id)

    proxy = ClamdProxy(clamd, port)  # clamd is reachable at that address again
    await proxy.start()
    try:
        await run_burst("scan", scan.handle)
    finally:
        await proxy.stop()

    scanned = await step_row(sessions, submission.id, "scan")
    assert (scanned.state, scanned.attempts, scanned.result["verdict"]) == ("succeeded", 2, "clean")
    assert await step_events(sessions, submission.id, "scan") == [
        "step.running",
        "step.retrying",
        "step.running",
        "step.succeeded",
    ]


async def test_clamd_gone_for_good_fails_the_scan_after_max_tries_with_the_reason(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd
) -> None:
    use_clamd(settings, clamd, port=free_port())
    quick_retries(settings, "scan", max_tries=2)
    world = await factory.world()
    submission = await factory.submission(world, b"never scanned\n")
    await enqueue_step(arq_redis, "scan", submission.id)

    await run_burst("scan", scan.handle)

    scanned = await step_row(sessions, submission.id, "scan")
    assert scanned.state == "failed"
    assert "virus scanner unavailable" in (scanned.error or "")
    assert "gave up after 2 attempts" in (scanned.error or "")
    states = await step_states(sessions, submission.id)
    assert {name for name, state in states.items() if state == "skipped"} == set(STEP_NAMES) - {"scan"}
    assert (await submission_row(sessions, submission.id)).status == "needs_attention"
    assert await make_storage(settings).exists(Area.incoming, submission.storage_key)  # kept for a rescan


async def test_a_file_over_the_scanner_limit_fails_the_scan_without_retrying(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any, clamd: Clamd
) -> None:
    use_clamd(settings, clamd)
    world = await factory.world()
    submission = await factory.submission(world, b"x" * (CLAMD_STREAM_MAX + 1024 * 1024))
    await enqueue_step(arq_redis, "scan", submission.id)

    await run_burst("scan", scan.handle)

    scanned = await step_row(sessions, submission.id, "scan")
    assert (scanned.state, scanned.attempts) == ("failed", 1)
    assert "too large for the virus scanner" in (scanned.error or "")
    assert not await make_storage(settings).exists(Area.store, submission.storage_key)
