"""Marking claims: a member of staff says "I'm marking this", so a second marker does not take the same script."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import func, select

from api.deps import CurrentUser, RedisDep, SessionDep
from core import keys, marking
from core.access import submission_audience
from core.audience import Audience
from core.chat import topic_seq
from core.grades import marking_progress
from core.models import Submission

router = APIRouter(prefix="/api/submissions", tags=["marking"])


class ClaimIn(BaseModel):
    take_over: bool = False  # the marker saw "being marked by X" and confirmed


@router.post("/{submission_id}/claim", response_model=None)
async def claim(
    submission_id: int, body: ClaimIn, user: CurrentUser, session: SessionDep, redis: RedisDep
) -> dict[str, Any] | JSONResponse:
    """200 with the marking state; 409 naming the other marker unless ``take_over``; 404 for non-staff."""
    try:
        state = await marking.claim(session, redis, submission_id, user.id, take_over=body.take_over)
    except marking.MarkingRefused as refused:
        if refused.status == 409:
            return JSONResponse({"detail": refused.detail, **(refused.marker or {})}, status_code=409)
        raise HTTPException(refused.status, refused.detail) from None
    return state.as_dict(submission_id)


@router.delete("/{submission_id}/claim")
async def unclaim(submission_id: int, user: CurrentUser, session: SessionDep, redis: RedisDep) -> dict[str, Any]:
    """Back to the queue: nobody is marking it now."""
    try:
        state = await marking.unclaim(session, redis, submission_id, user.id)
    except marking.MarkingRefused as refused:
        raise HTTPException(refused.status, refused.detail) from None
    return state.as_dict(submission_id)


@router.get("/{submission_id}/marking")
async def marking_view(submission_id: int, user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    """Where the submission is in marking and how far its assignment's marking has got, with the seqs of
    both topics read first, so a page following them from there misses nothing. The owner never learns
    who marks it; staff do."""
    submission = await session.get(Submission, submission_id)
    viewer = await submission_audience(session, user.id, submission) if submission is not None else None
    if submission is None or viewer is None:
        raise HTTPException(404, "No such submission.")
    topic, assignment_topic = keys.submission_topic(submission.id), keys.assignment_topic(submission.assignment_id)
    seqs = {topic: await topic_seq(session, topic), assignment_topic: await topic_seq(session, assignment_topic)}
    state = (await marking.state_of(session, submission)).as_dict(submission.id)
    if viewer is not Audience.STAFF:
        state = {"submission_id": submission.id, "state": state["state"]}
    latest = await session.scalar(
        select(func.max(Submission.attempt)).where(
            Submission.assignment_id == submission.assignment_id, Submission.user_id == submission.user_id
        )
    )
    return {
        **state,
        "latest": latest == submission.attempt,
        "progress": await marking_progress(session, submission.assignment_id),
        "topic": topic,
        "seq": seqs[topic],
        "assignment_topic": assignment_topic,
        "assignment_seq": seqs[assignment_topic],
        "me": user.id,
    }
