"""The browser's gap fetch for any topic it may subscribe to: events after a seq."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from api.deps import CurrentUser, SessionDep
from core.access import can_subscribe, principal_for
from core.events import events_after

router = APIRouter(prefix="/api/topics", tags=["events"])


@router.get("/{topic}/events")
async def topic_events(
    topic: str, user: CurrentUser, session: SessionDep, after: Annotated[int, Query(ge=0)] = 0
) -> dict[str, Any]:
    principal = await principal_for(session, user.id)
    if principal is None or not await can_subscribe(session, principal, topic):
        raise HTTPException(403, "You may not read this topic.")
    return {"topic": topic, "events": [e.as_dict() for e in await events_after(session, topic, after)]}
