"""The baseline for bench/intake.py: the api plus an endpoint that does the work inline.

`POST /bench/inline/assignments/{id}/submissions` is the way the slow system
did it: read the whole upload, scan it with clamd, store it, record it and
render its thumbnail, all before answering. Only the benchmark serves it.
"""

from __future__ import annotations

import asyncio
import hashlib
import tempfile
import uuid
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request

from api.deps import CurrentUser, SessionsDep, SettingsDep, StorageDep
from api.main import create_app
from core.clock import utcnow
from core.db import transaction
from core.models import Submission, SubmissionStep
from core.pipeline import STEP_NAMES
from core.sniff import sniff
from core.storage import Area
from workers.clamd import ClamdClient
from workers.documents import render_thumbnail

router = APIRouter(prefix="/bench/inline")


async def _one_chunk(data: bytes) -> Any:
    yield data


def _thumbnail(kind: str, filename: str, data: bytes) -> bytes:
    with tempfile.NamedTemporaryFile(suffix=Path(filename).suffix) as handle:
        handle.write(data)
        handle.flush()
        return render_thumbnail(kind, filename, Path(handle.name)).png


@router.post("/assignments/{assignment_id}/submissions", status_code=201)
async def submit_inline(
    assignment_id: int,
    request: Request,
    user: CurrentUser,
    sessions: SessionsDep,
    settings: SettingsDep,
    storage: StorageDep,
) -> dict[str, Any]:
    form = await request.form()
    upload = form.get("file")
    if upload is None or isinstance(upload, str):
        raise HTTPException(422, "no file")
    data = await upload.read()
    sniffed = sniff(data[:4096])
    if sniffed is None:
        raise HTTPException(415, "unknown type")
    verdict = await ClamdClient.from_settings(settings.scanner).instream(_one_chunk(data))
    if verdict.infected:
        raise HTTPException(422, "infected")
    key = f"{assignment_id}/{uuid.uuid4().hex}"
    await storage.put_bytes(Area.store, key, data)
    png = await asyncio.to_thread(_thumbnail, sniffed.kind, upload.filename or "upload", data)
    await storage.put_bytes(Area.thumbnails, f"{key}.png", png)
    now = utcnow()
    async with transaction(sessions) as session:
        submission = Submission(
            assignment_id=assignment_id,
            user_id=user.id,
            attempt=int(uuid.uuid4().int % 2**31),
            late=False,
            sha256=hashlib.sha256(data).hexdigest(),
            size=len(data),
            original_filename=upload.filename or "upload",
            content_type=sniffed.content_type,
            kind=sniffed.kind,
            storage_key=key,
            thumbnail_key=f"{key}.png",
            status="complete",
            received_at=now,
            completed_at=now,
        )
        session.add(submission)
        await session.flush()
        session.add_all(
            SubmissionStep(submission_id=submission.id, step=step, state="succeeded", finished_at=now)
            for step in STEP_NAMES
        )
    return {"id": submission.id}


def create_inline_app() -> FastAPI:
    app = create_app()
    app.include_router(router)
    return app
