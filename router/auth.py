"""Who a WebSocket session is (ticket authentication) and what it may do (authorisation).

A ticket is minted by the api for a logged-in web session (GET /api/ws-ticket).
It is accepted once: the router marks it used in Redis with SET NX, so a
replayed ticket is refused even on another replica. The web session behind it
must still exist and be neither revoked nor expired.

Authorisation answers come from core.access and are cached briefly per
(user, action, topic); a message on keys.AUTHZ_INVALIDATE_CHANNEL (a user id,
or "*") drops a user's cached answers at once, e.g. when enrolment changes.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import access, keys
from core.auth import TokenError, read_ws_ticket
from core.clock import utcnow
from core.models import WebSession


class AuthenticationFailed(Exception):
    """The ticket is forged, expired, replayed, or its web session is gone."""


@dataclass(frozen=True)
class Identity:
    user_id: int
    role: str  # student | staff | service
    web_session_id: str

    @property
    def principal(self) -> access.Principal:
        return access.Principal(self.user_id, self.role)


async def authenticate_ticket(
    ticket: str, *, secret: str, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> Identity:
    try:
        claims = read_ws_ticket(ticket, secret)
    except TokenError as error:
        raise AuthenticationFailed(f"ticket {error}") from None
    ttl = max(1, math.ceil(claims.expires_at - time.time()) + 1)
    if not await redis.set(keys.ws_ticket_used(claims.ticket_id), "1", nx=True, ex=ttl):
        raise AuthenticationFailed("ticket already used")
    if await redis.exists(keys.web_session_revoked(claims.session_id)):
        raise AuthenticationFailed("web session logged out")
    async with sessions() as db:
        web_session = await db.get(WebSession, claims.session_id)
        if web_session is None or web_session.user_id != claims.user_id:
            raise AuthenticationFailed("no such web session")
        if web_session.revoked_at is not None:
            raise AuthenticationFailed("web session logged out")
        if web_session.expires_at <= utcnow():
            raise AuthenticationFailed("web session expired")
        principal = await access.principal_for(db, claims.user_id)
    if principal is None:
        raise AuthenticationFailed("no such user")
    return Identity(principal.user_id, principal.role, claims.session_id)


SUBSCRIBE, PUBLISH = "subscribe", "publish"
MAX_CACHED_USERS = 50_000


class Authorizer:
    """core.access answers with a short per-(user, action, topic) cache."""

    def __init__(self, sessions: async_sessionmaker[AsyncSession], ttl_seconds: float) -> None:
        self.sessions = sessions
        self.ttl = ttl_seconds
        self._cache: dict[int, dict[tuple[str, str], tuple[bool, float]]] = {}

    async def allowed(self, who: access.Principal, action: str, topic: str) -> bool:
        now = time.monotonic()
        if len(self._cache) > MAX_CACHED_USERS:
            self._cache.clear()  # crude but bounded; answers are cheap to recompute
        per_user = self._cache.setdefault(who.user_id, {})
        hit = per_user.get((action, topic))
        if hit is not None and hit[1] > now:
            return hit[0]
        async with self.sessions() as db:
            check = access.can_subscribe if action == SUBSCRIBE else access.can_publish
            answer = await check(db, who, topic)
        per_user[(action, topic)] = (answer, now + self.ttl)
        return answer

    async def principal(self, user_id: int) -> access.Principal | None:
        async with self.sessions() as db:
            return await access.principal_for(db, user_id)

    def invalidate(self, user_id: int | None) -> None:
        """Forget one user's answers, or everyone's with None."""
        if user_id is None:
            self._cache.clear()
        else:
            self._cache.pop(user_id, None)
