"""Flash messages for the logged-in user: list the unconfirmed ones, confirm one."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Response
from pydantic import BaseModel

from api.deps import CurrentUser, RedisDep, SessionDep, SessionsDep
from core.flash import confirm_flash, flash_as_dict, pending_flashes

router = APIRouter(prefix="/api/flashes", tags=["flash"])


class Confirmation(BaseModel):
    # seen: visible long enough; dismissed: closed by the user; clicked: the user followed its link or button.
    reason: Literal["seen", "dismissed", "clicked"] = "seen"


@router.get("")
async def list_flashes(user: CurrentUser, session: SessionDep) -> dict[str, Any]:
    return {"flashes": [flash_as_dict(flash) for flash in await pending_flashes(session, user.id)]}


@router.post("/{flash_id}/confirm", status_code=204)
async def confirm(
    flash_id: int, body: Confirmation, user: CurrentUser, sessions: SessionsDep, redis: RedisDep
) -> Response:
    if not await confirm_flash(sessions, redis, user.id, flash_id, body.reason):
        raise HTTPException(404, "There is no such message for you.")
    return Response(status_code=204)
