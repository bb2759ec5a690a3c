"""The browser's gap fetch for any topic it may subscribe to: events after a seq, as its audience sees them."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from api.deps import CurrentUser, SessionDep, SettingsDep
from core.access import audience_for, principal_for
from core.audience import project_event
from core.events import events_after

router = APIRouter(prefix="/api/topics", tags=["events"])


@router.get("/{topic}/events")
async def topic_events(
    topic: str,
    user: CurrentUser,
    session: SessionDep,
    settings: SettingsDep,
    after: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    principal = await principal_for(session, user.id)
    viewer = await audience_for(session, principal, topic) if principal is not None else None
    if viewer is None:
        raise HTTPException(403, "You may not read this topic.")
    events = [project_event(e.as_dict(), viewer) for e in await events_after(session, topic, after)]
    page, more = within_bytes(events, settings.chat.catch_up_max_bytes)
    return {"topic": topic, "events": page, "more": more or len(events) == EVENTS_PAGE}


EVENTS_PAGE = 500  # core.events.events_after's page


def within_bytes(events: list[dict[str, Any]], budget: int) -> tuple[list[dict[str, Any]], bool]:
    """The first events that fit in ``budget`` bytes of JSON (always at least one), and whether any were left."""
    used = 0
    for index, event in enumerate(events):
        used += len(json.dumps(event, separators=(",", ":"), default=str).encode())
        if used > budget and index > 0:
            return events[:index], True
    return events, False
