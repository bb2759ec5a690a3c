"""The `thumbnail` step: a PNG preview (≤ 320 px wide) of the stored file.

Images are scaled, a PDF's first page is rendered, text and DOCX show their
first lines; other kinds get a generic icon, and the step's result says so
(``source: "icon"``) rather than pretending to be a preview. A file that
cannot be decoded fails the step for good with the reason: a corrupt file
stays corrupt however often it is retried.

The preview is written to the thumbnails area under ``<storage key>.png`` and
``submission.thumbnail_key`` is set, so the api can serve it. Rendering again
overwrites the same key, which makes a repeated job harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from core.storage import Area, ObjectMissing
from workers.base import step_worker_settings
from workers.documents import DocumentError, render_thumbnail
from workers.runner import Outcome, PermanentStepError, StepContext, TransientStepError

TASK = "thumbnail"


def thumbnail_key(storage_key: str) -> str:
    return f"{storage_key}.png"


@contextlib.asynccontextmanager
async def local_copy(storage: Any, area: Area, key: str) -> AsyncIterator[Path]:
    """A path to the object on this machine: the file itself, or a temporary download (S3)."""
    path = await storage.local_path(area, key)
    if path is not None:
        if not await asyncio.to_thread(path.is_file):
            raise ObjectMissing(f"{area}/{key}")
        yield path
        return
    handle = await asyncio.to_thread(tempfile.NamedTemporaryFile, prefix="handin-thumb-", delete=False)
    temp = Path(handle.name)
    try:
        async for chunk in storage.open(area, key):
            await asyncio.to_thread(handle.write, chunk)
        await asyncio.to_thread(handle.close)
        yield temp
    finally:
        handle.close()
        await asyncio.to_thread(os.unlink, temp)


async def handle(ctx: StepContext) -> Outcome:
    submission = ctx.submission
    try:
        async with (
            ctx.progress_if_slow("drawing a preview"),
            local_copy(ctx.storage, Area.store, submission.storage_key) as path,
        ):
            thumbnail = await asyncio.to_thread(render_thumbnail, submission.kind, submission.original_filename, path)
    except DocumentError as error:
        raise PermanentStepError(str(error)) from error
    except ObjectMissing as error:
        # The store step succeeded before this ran; a missing object may be a lagging replica.
        raise TransientStepError(f"stored file not found: {error}") from error

    key = thumbnail_key(submission.storage_key)
    await ctx.storage.put_bytes(Area.thumbnails, key, thumbnail.png)
    result: dict[str, Any] = {
        "width": thumbnail.width,
        "height": thumbnail.height,
        "key": key,
        "source": thumbnail.source,
    }
    if thumbnail.note:
        result["note"] = thumbnail.note
    # The key is recorded by the transaction that ends the step, not one of its own.
    return Outcome("succeeded", result, submission_values={"thumbnail_key": key})


WorkerSettings = step_worker_settings(TASK, handle)
