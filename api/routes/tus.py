"""Resumable uploads (tus 1.0) beside the plain multipart upload; the protocol lives in ``api.tus``."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from api.deps import CurrentUser, RedisDep, SessionsDep, SettingsDep, StorageDep
from api.tus import Resumable, check_version, expires_header, options_headers, tus_headers

router = APIRouter(prefix="/api/assignments/{assignment_id}/uploads", tags=["submissions"])


async def _resumable(settings: SettingsDep, sessions: SessionsDep, redis: RedisDep, storage: StorageDep) -> Resumable:
    return Resumable(settings, sessions, redis, storage)


ResumableDep = Annotated[Resumable, Depends(_resumable)]


@router.options("")
async def capabilities(assignment_id: int, settings: SettingsDep) -> Response:
    """What this server speaks: tus version, extensions, largest upload, checksum algorithm."""
    return Response(status_code=204, headers=options_headers(settings.max_upload_bytes))


@router.post("", status_code=201)
async def create(
    assignment_id: int,
    request: Request,
    user: CurrentUser,
    resumable: ResumableDep,
) -> Response:
    """tus creation: ``Upload-Length`` (bytes) and ``Upload-Metadata`` (``filename``); answers ``Location``."""
    upload = await resumable.create(request, user, assignment_id)
    headers = tus_headers(
        Location=f"/api/assignments/{assignment_id}/uploads/{upload.id}",
        **{"Upload-Expires": expires_header(upload.expires_at), "Upload-Offset": "0"},
    )
    return Response(status_code=201, headers=headers)


@router.head("/{upload_id}")
async def offset(
    assignment_id: int,
    upload_id: str,
    user: CurrentUser,
    resumable: ResumableDep,
) -> Response:
    """Where the upload stands: ``Upload-Offset`` to resume from (and the submission id once complete)."""
    upload = await resumable.find(user, assignment_id, upload_id)
    progress_headers = {
        "Upload-Offset": str(upload.received),
        "Upload-Length": str(upload.length),
        "Upload-Expires": expires_header(upload.expires_at),
        "Cache-Control": "no-store",
    }
    if upload.submission_id is not None:
        progress_headers["Handin-Submission-Id"] = str(upload.submission_id)
    return Response(status_code=200, headers=tus_headers(**progress_headers))


@router.patch("/{upload_id}", status_code=204)
async def append(
    assignment_id: int,
    upload_id: str,
    request: Request,
    user: CurrentUser,
    resumable: ResumableDep,
) -> Response:
    """tus PATCH (``application/offset+octet-stream`` at ``Upload-Offset``); the last byte makes the submission,
    whose id comes back in ``Handin-Submission-Id``."""
    progress = await resumable.write(request, user, assignment_id, upload_id)
    return Response(status_code=204, headers=progress.headers())


@router.delete("/{upload_id}", status_code=204)
async def terminate(
    assignment_id: int,
    upload_id: str,
    request: Request,
    user: CurrentUser,
    resumable: ResumableDep,
) -> Response:
    """tus termination: the bytes sent so far are dropped."""
    check_version(request)
    upload = await resumable.find(user, assignment_id, upload_id)
    await resumable.terminate(user, upload)
    return Response(status_code=204, headers=tus_headers())
