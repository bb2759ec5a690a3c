"""``POST /api/webhooks/similarity``: the external provider reports a finished similarity check.

The body is trusted only with a valid ``X-Turnitin-Signature`` (hex
HMAC-SHA256 of the raw body with ``similarity.webhook_secret``, compared in
constant time); anything else gets 401 and changes nothing. The provider's
submission id leads to our step (it is saved on the step row as soon as the
provider hands it out). A webhook racing a poll job, or delivered twice, is
recorded once: ``finish_step`` tells us whether this call was the one.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import APIRouter, HTTPException, Request, status
from sqlalchemy import select

from api.deps import RedisDep, SessionsDep, SettingsDep
from core.models import SubmissionStep
from core.pipeline import StepState
from core.similarity.external import (
    EVENT_TYPE_HEADER,
    REPORT_EVENTS,
    SIGNATURE_HEADER,
    final_result,
    parse_report,
    signature_ok,
)

# finish_step lives with the step runner; it needs only core (no worker libraries).
from core.steps import finish_step

STEP = "similarity"
ACTOR = "webhook:similarity"

router = APIRouter(prefix="/api/webhooks", tags=["webhooks"])


@router.post("/similarity")
async def similarity_report(
    request: Request, settings: SettingsDep, sessions: SessionsDep, redis: RedisDep
) -> dict[str, Any]:
    body = await request.body()
    if not signature_ok(settings.similarity.webhook_secret, body, request.headers.get(SIGNATURE_HEADER)):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "bad or missing signature")
    event = request.headers.get(EVENT_TYPE_HEADER)
    if event and event not in REPORT_EVENTS:
        return {"status": "ignored", "reason": f"event {event} is not a similarity report"}
    try:
        payload = json.loads(body)
        report = parse_report(payload if isinstance(payload, dict) else {})
    except ValueError as error:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unreadable report: {error}") from error
    if not report.complete or report.score is None:
        return {"status": "ignored", "reason": "report not complete"}

    async with sessions() as session:
        # Waiting steps first (few, and `state` is indexed); then finished ones, for a repeated delivery.
        for states in ([StepState.running.value], [state.value for state in StepState]):
            row = await session.scalar(
                select(SubmissionStep)
                .where(
                    SubmissionStep.state.in_(states),
                    SubmissionStep.step == STEP,
                    SubmissionStep.result["provider_submission_id"].as_string() == report.provider_submission_id,
                )
                .limit(1)
            )
            if row is not None:
                break
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no submission waits for this report")
    if row.state == StepState.running.value and row.wait_until is None:
        # Our worker is still handing the file over; the provider retries (and polling backs it up).
        raise HTTPException(status.HTTP_409_CONFLICT, "not ready for this report yet; retry later")
    submission_id = row.submission_id
    recorded = await finish_step(
        sessions,
        redis,
        submission_id,
        STEP,
        StepState.succeeded,
        result=final_result(report.provider_submission_id, report.score),
        actor=ACTOR,
    )
    return {"status": "recorded" if recorded else "already recorded"}
