"""Signed receipts: download one (owner and course staff), check one (anyone), the public keys (anyone).

The verify page hashes the student's file in the browser (SubtleCrypto), so
the file never leaves their machine; only the receipt and that hash are sent
to ``POST /api/receipts/verify``. ``handin verify-receipt`` does the same
offline with the keys from ``/.well-known/handin-receipt-keys.json``.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from api.deps import CurrentUser, OptionalUser, SessionDep, SettingsDep
from api.routes.submissions import NOT_FOUND, content_disposition
from api.routes.views import render
from core.access import submission_audience
from core.models import Submission
from core.receipts import (
    WELL_KNOWN_PATH,
    build_receipt,
    key_ring,
    load_facts,
    receipt_bytes,
    receipt_filename,
    verify_receipt,
)

router = APIRouter(tags=["receipts"])
SHA256_HEX = re.compile(r"^[0-9a-fA-F]{64}$")


class VerifyRequest(BaseModel):
    """A receipt as its JSON document, and optionally the SHA-256 (and size) of the file it is for."""

    receipt: Any
    sha256: str | None = Field(default=None, pattern=SHA256_HEX.pattern)
    size: int | None = Field(default=None, ge=0)


@router.get(WELL_KNOWN_PATH)
async def receipt_keys(settings: SettingsDep) -> JSONResponse:
    """Every key receipts were or are signed with: public, cacheable, readable from anywhere."""
    return JSONResponse(
        key_ring(settings).public_document(),
        headers={"Cache-Control": "public, max-age=300", "Access-Control-Allow-Origin": "*"},
    )


@router.get("/verify", response_class=HTMLResponse, include_in_schema=False)
async def verify_page(request: Request, user: OptionalUser, session: SessionDep, settings: SettingsDep) -> Response:
    ring = key_ring(settings)
    return await render(request, session, user, "verify.html", installation=ring.installation, keys_url=WELL_KNOWN_PATH)


@router.post("/api/receipts/verify")
async def verify(body: VerifyRequest, settings: SettingsDep) -> dict[str, Any]:
    """What a receipt proves: 200 with ``valid`` false and the reasons when it proves nothing."""
    verdict = verify_receipt(body.receipt, key_ring(settings), body.sha256, body.size)
    return verdict.as_json()


@router.get("/api/submissions/{submission_id}/receipt")
async def download_receipt(
    submission_id: int, user: CurrentUser, session: SessionDep, settings: SettingsDep
) -> Response:
    submission = await session.get(Submission, submission_id)
    if submission is None or await submission_audience(session, user.id, submission) is None:
        raise HTTPException(404, NOT_FOUND)
    facts = await load_facts(session, submission_id)
    if facts is None:
        raise HTTPException(404, NOT_FOUND)
    return Response(
        receipt_bytes(build_receipt(facts, settings)),
        media_type="application/json",
        headers={
            "Content-Disposition": content_disposition(receipt_filename(submission_id)),
            "Cache-Control": "private, no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )
