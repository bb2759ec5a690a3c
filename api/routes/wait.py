"""An honest wait: ``GET /api/submissions/{id}/wait`` (its owner and course staff).

Where each of the submission's queued steps stands in its queue and when it
may be done (core.wait), from the autoscaler's own figures. One database
query and one Redis round trip; the page polls it only while a step waits.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from sqlalchemy import select

from api.deps import CurrentUser, RedisDep, SessionDep, SettingsDep
from api.routes.submissions import NOT_FOUND
from core.access import submission_audience
from core.models import Submission, SubmissionStep
from core.pipeline import StepState
from core.wait import read_waits, wait_view

router = APIRouter(prefix="/api", tags=["submissions"])

# A step whose job sits in its queue: waiting for a worker, or for its retry time.
WAITING_STATES = (StepState.queued.value, StepState.retrying.value)


@router.get("/submissions/{submission_id}/wait")
async def submission_wait(
    submission_id: int, user: CurrentUser, session: SessionDep, redis: RedisDep, settings: SettingsDep
) -> JSONResponse:
    submission = await session.get(Submission, submission_id)
    if submission is None or await submission_audience(session, user.id, submission) is None:
        raise HTTPException(404, NOT_FOUND)
    steps = list(
        await session.scalars(
            select(SubmissionStep.step).where(
                SubmissionStep.submission_id == submission_id, SubmissionStep.state.in_(WAITING_STATES)
            )
        )
    )
    now = time.time()
    view: dict[str, Any] = wait_view(await read_waits(redis, settings, submission_id, steps, now), now)
    return JSONResponse(view, headers={"Cache-Control": "private, no-store"})
