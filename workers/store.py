"""The store step: move a scanned upload into the permanent store and prove it is intact.

The move is idempotent: a job delivered again after a crash between the move
and the database update finds the file already in the store and verifies it
there.
"""

from __future__ import annotations

from core.storage import Area, ObjectMissing
from workers.base import step_worker_settings
from workers.runner import Outcome, PermanentStepError, StepContext


async def handle(ctx: StepContext) -> Outcome:
    submission = ctx.submission
    try:
        stored = await ctx.storage.move(Area.incoming, Area.store, submission.storage_key)
    except ObjectMissing as error:
        raise PermanentStepError(f"the uploaded file is in neither the incoming area nor the store: {error}") from error
    if stored.sha256 != submission.sha256:
        raise PermanentStepError(
            f"checksum mismatch: received {submission.sha256}, stored file has {stored.sha256} ({stored.size} bytes)"
        )
    return Outcome(result={"sha256": stored.sha256, "size": stored.size, "verified": True})


WorkerSettings = step_worker_settings("store", handle)
