"""Submissions: upload, status, events, the file and its thumbnail."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Header, HTTPException, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse

from api.deps import CurrentUser, RedisDep, SessionDep, SessionsDep, SettingsDep, StorageDep
from api.intake import Intake
from api.views import submission_view
from core import keys
from core.access import submission_audience
from core.audience import Audience, project_event
from core.events import events_after
from core.models import Submission, User
from core.pipeline import SubmissionStatus
from core.storage import Area, ObjectMissing, Storage

router = APIRouter(prefix="/api", tags=["submissions"])
NOT_FOUND = "There is no such submission, or it is not yours to see."


@router.post("/assignments/{assignment_id}/submissions", status_code=202)
async def submit(
    assignment_id: int,
    request: Request,
    user: CurrentUser,
    settings: SettingsDep,
    sessions: SessionsDep,
    redis: RedisDep,
    storage: StorageDep,
    idempotency_key: Annotated[str | None, Header()] = None,
) -> JSONResponse:
    """Multipart field ``file``. The body is streamed, never read whole (no ``request.form()``)."""
    accepted = await Intake(settings, sessions, redis, storage).submit(request, user, assignment_id, idempotency_key)
    headers = {"Location": accepted.body()["status_url"]}
    if accepted.replayed:
        headers["Idempotent-Replayed"] = "true"
    return JSONResponse(accepted.body(), status_code=202, headers=headers)


@router.get("/submissions/{submission_id}")
async def get_submission(submission_id: int, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    submission, viewer = await _visible_submission_as(session, user, submission_id)
    return await submission_view(session, submission, viewer)


@router.get("/submissions/{submission_id}/events")
async def submission_events(
    submission_id: int, user: CurrentUser, session: SessionDep, after: Annotated[int, Query(ge=0)] = 0
) -> dict[str, Any]:
    _submission, viewer = await _visible_submission_as(session, user, submission_id)
    topic = keys.submission_topic(submission_id)
    events = [project_event(e.as_dict(), viewer) for e in await events_after(session, topic, after)]
    return {"topic": topic, "events": events}


@router.get("/submissions/{submission_id}/file")
async def download(
    submission_id: int, user: CurrentUser, sessions: SessionsDep, storage: StorageDep
) -> StreamingResponse:
    async with sessions() as session:
        submission = await _visible_submission(session, user, submission_id)
    if submission.status == SubmissionStatus.quarantined:
        raise HTTPException(410, "This file was flagged by the virus scan and quarantined; it cannot be downloaded.")
    area = await _where_is(storage, submission.storage_key)
    return StreamingResponse(
        _open_following_moves(storage, area, submission.storage_key),
        media_type=submission.content_type,
        headers={
            "Content-Disposition": content_disposition(submission.original_filename),
            "Content-Length": str(submission.size),
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.get("/submissions/{submission_id}/thumbnail")
async def thumbnail(
    submission_id: int, user: CurrentUser, sessions: SessionsDep, storage: StorageDep
) -> StreamingResponse:
    async with sessions() as session:
        submission = await _visible_submission(session, user, submission_id)
    key = submission.thumbnail_key
    if not key or not await storage.exists(Area.thumbnails, key):
        raise HTTPException(404, "The thumbnail is not ready yet.")
    return StreamingResponse(
        storage.open(Area.thumbnails, key),
        media_type="image/png",
        headers={"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"},
    )


def content_disposition(filename: str, disposition: str = "attachment") -> str:
    """RFC 6266: an ASCII fallback plus the real name RFC 5987-encoded."""
    fallback = "".join(ch if 0x20 <= ord(ch) < 0x7F and ch not in '"\\' else "_" for ch in filename) or "submission"
    return f"{disposition}; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


async def _visible_submission(session: SessionDep, user: User, submission_id: int) -> Submission:
    return (await _visible_submission_as(session, user, submission_id))[0]


async def _visible_submission_as(session: SessionDep, user: User, submission_id: int) -> tuple[Submission, Audience]:
    """The submission and the audience this user is for it; 404 if they may not see it, so ids do not leak."""
    submission = await session.get(Submission, submission_id)
    viewer = await submission_audience(session, user.id, submission) if submission is not None else None
    if submission is None or viewer is None:
        raise HTTPException(404, NOT_FOUND)
    return submission, viewer


async def _open_following_moves(storage: Storage, area: Area, key: str) -> AsyncIterator[bytes]:
    """The store step may move the file between our look and our read: then read it where it went."""
    try:
        async for chunk in storage.open(area, key):
            yield chunk
    except ObjectMissing:
        if area != Area.incoming:
            raise
        async for chunk in storage.open(Area.store, key):
            yield chunk


async def _where_is(storage: Storage, key: str) -> Area:
    """Files start in incoming and move to the store after the scan."""
    for area in (Area.store, Area.incoming):
        if await storage.exists(area, key):
            return area
    raise HTTPException(404, "The file is not available right now.")
