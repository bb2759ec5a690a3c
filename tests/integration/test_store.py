"""The store step: move to the permanent store, verify the SHA-256, survive a repeated delivery."""

from __future__ import annotations

from typing import Any

from core.pipeline import STEP_NAMES
from core.queues import enqueue_step
from core.settings import Settings
from core.storage import Area, make_storage
from tests.fixtures.pipeline import events, step_row, step_states, submission_row
from workers import scan, store


async def _scanned(factory: Any, arq_redis: Any, run_burst: Any, content: bytes) -> Any:
    """A submission past its scan (no scanner configured: skipped), its store job queued."""
    world = await factory.world()
    submission = await factory.submission(world, content)
    await enqueue_step(arq_redis, "scan", submission.id)
    await run_burst("scan", scan.handle)
    return submission


async def test_a_file_already_moved_before_a_crash_is_verified_and_the_step_succeeds(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    """The worker moved the file, then died before writing the step row; the job comes again."""
    submission = await _scanned(factory, arq_redis, run_burst, b"moved once already\n")
    storage = make_storage(settings)
    await storage.move(Area.incoming, Area.store, submission.storage_key)

    await run_burst("store", store.handle)

    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.result["sha256"], row.result["verified"]) == ("succeeded", submission.sha256, True)
    assert await storage.exists(Area.store, submission.storage_key)


async def test_a_checksum_mismatch_fails_the_step_for_good(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    submission = await _scanned(factory, arq_redis, run_burst, b"what the student sent\n")
    # The bytes changed on disk after the upload was hashed.
    await make_storage(settings).put_bytes(Area.incoming, submission.storage_key, b"something else entirely\n")

    await run_burst("store", store.handle)

    row = await step_row(sessions, submission.id, "store")
    assert (row.state, row.attempts) == ("failed", 1)
    assert (row.error or "").startswith("checksum mismatch")
    assert submission.sha256 in (row.error or "")
    states = await step_states(sessions, submission.id)
    fan_out = ["similarity", "admin", "receipt", "thumbnail"]
    assert [name for name in STEP_NAMES if states[name] == "skipped" and name in fan_out] == fan_out
    assert (await submission_row(sessions, submission.id)).status == "needs_attention"


async def test_a_missing_file_fails_the_step_with_a_clear_reason(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    submission = await _scanned(factory, arq_redis, run_burst, b"about to vanish\n")
    await make_storage(settings).delete(Area.incoming, submission.storage_key)

    await run_burst("store", store.handle)

    row = await step_row(sessions, submission.id, "store")
    assert row.state == "failed"
    assert "neither the incoming area nor the store" in (row.error or "")


async def test_a_stored_submission_delivered_again_is_not_stored_twice(
    factory: Any, settings: Settings, sessions: Any, arq_redis: Any, run_burst: Any
) -> None:
    submission = await _scanned(factory, arq_redis, run_burst, b"store me exactly once\n")
    await run_burst("store", store.handle)
    await enqueue_step(arq_redis, "store", submission.id)
    await run_burst("store", store.handle)

    topic = f"submission.{submission.id}"
    succeeded = [e for e in await events(sessions, topic, "step.succeeded") if e.data["step"] == "store"]
    assert len(succeeded) == 1
    assert (await step_row(sessions, submission.id, "store")).attempts == 1
    queued = [e.data["step"] for e in await events(sessions, topic, "step.queued") if e.data["step"] != "store"]
    assert sorted(queued) == ["admin", "receipt", "similarity", "thumbnail"]  # the fan-out happened once
