"""Who a WebSocket session is (ticket authentication) and what it may do (authorisation).

A ticket is minted by the api for a logged-in web session (GET /api/ws-ticket).
It is accepted once: the router marks it used in Redis with SET NX, so a
replayed ticket is refused even on another replica. The web session behind it
must still exist and be neither revoked nor expired.

Authorisation answers come from core.access and are cached briefly per
(user, action, topic), at most ``authz_cache_entries`` of them (LRU); a message
on keys.AUTHZ_INVALIDATE_CHANNEL (a user id, or "*") drops a user's cached
answers at once, e.g. when enrolment changes.

Every look-up has a time limit: one that takes longer (a database lock, an
exhausted pool) raises AuthorizationTimeout, which the router answers with an
ERROR and logs, so a SUBSCRIBE is never left unanswered. The look-up itself runs
on as its own task and is not cancelled: cancelling a query mid-flight can leave
the caller waiting for the driver's clean-up (aiosqlite closes a connection only
after its running statement returns), which is the very wait the limit is for.
Concurrent look-ups of the same (user, action, topic) share that one task.

Neither the ticket check nor a decision asks the database per session: the web session, the user's
rights and the topic's facts come from router.directory, which keeps them (correct through the
invalidations handin publishes) and loads what it lacks in batches shared by concurrent handshakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from redis.asyncio import Redis

from core import access, keys
from core.audience import Audience
from core.auth import Ticket, TokenError, read_ws_ticket
from core.clock import utcnow
from router.directory import BATCH_LIMIT, Directory, WebSessionFacts

log = logging.getLogger(__name__)


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


# Marks each ticket used (SET NX with its expiry) and reads its web session's logout mark, for a
# whole batch of handshakes in one command: a reply of 2 * first_use + logged_out per ticket.
USE_TICKETS = """
local replies = {}
for i = 1, #KEYS, 2 do
  local first = redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[(i + 1) / 2]) and 2 or 0
  replies[#replies + 1] = first + redis.call('EXISTS', KEYS[i + 1])
end
return replies
"""
TicketUse = tuple[bool, bool]  # (first use of this ticket, web session logged out)


class TicketLedger:
    """Marks tickets used (once across replicas) and reads web sessions' logout marks in Redis.

    Handshakes arriving together share one script call, and each is answered by a callback: during
    a reconnect storm a round trip, a task and futures per session cost more router CPU than the
    commands themselves.
    """

    def __init__(self, redis: Redis) -> None:
        self.redis = redis
        self._script = redis.register_script(USE_TICKETS)
        self._waiting: list[tuple[str, str, int, Callable[[TicketUse | Exception], None]]] = []
        self._running: asyncio.Task[None] | None = None

    def use(self, ticket_id: str, session_id: str, ttl: int, then: Callable[[TicketUse | Exception], None]) -> None:
        """Call ``then`` with (first use, logged out), or with the error if Redis could not answer."""
        self._waiting.append((ticket_id, session_id, ttl, then))
        if self._running is None:
            self._running = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let this loop turn's other handshakes join the batch
        try:
            while self._waiting:
                batch, self._waiting = self._waiting[:BATCH_LIMIT], self._waiting[BATCH_LIMIT:]
                replies: list[TicketUse | Exception]
                try:
                    answer = await self._script(
                        keys=[k for t, s, _, _ in batch for k in (keys.ws_ticket_used(t), keys.web_session_revoked(s))],
                        args=[ttl for _, _, ttl, _ in batch],
                        client=self.redis,
                    )
                    replies = [(bool(n & 2), bool(n & 1)) for n in answer]
                except Exception as error:  # each caller answers its browser (try again shortly)
                    replies = [error] * len(batch)
                for (*_, then), reply in zip(batch, replies, strict=True):
                    try:
                        then(reply)
                    except Exception:
                        log.exception("answering a ticket check failed")
        finally:
            self._running = None


def read_ticket(ticket: str, secret: str) -> Ticket:
    try:
        return read_ws_ticket(ticket, secret)
    except TokenError as error:
        raise AuthenticationFailed(f"ticket {error}") from None


def ticket_ttl(claims: Ticket) -> int:
    """How long the ticket's used mark must last: until the ticket could no longer be accepted."""
    return max(1, math.ceil(claims.expires_at - time.time()) + 1)


def check_use(use: TicketUse) -> None:
    first_use, logged_out = use
    if not first_use:
        raise AuthenticationFailed("ticket already used")
    if logged_out:
        raise AuthenticationFailed("web session logged out")


def identify(claims: Ticket, web_session: WebSessionFacts | None, rights: access.Rights | None) -> Identity:
    """Who the ticket's holder is, given its web session and rights (AuthenticationFailed if nobody)."""
    if web_session is None or web_session.user_id != claims.user_id:
        raise AuthenticationFailed("no such web session")
    if web_session.revoked:
        raise AuthenticationFailed("web session logged out")
    if web_session.expires_at <= utcnow():
        raise AuthenticationFailed("web session expired")
    if rights is None:
        raise AuthenticationFailed("no such user")
    principal = rights.principal
    return Identity(principal.user_id, principal.role, claims.session_id)


class AuthorizationTimeout(Exception):
    """An authorisation look-up did not answer within the time limit."""

    def __init__(self, action: str, topic: str, seconds: float) -> None:
        super().__init__(f"{action} {topic}: no answer after {seconds:.1f} s")
        self.action = action
        self.topic = topic
        self.seconds = seconds


SUBSCRIBE, PUBLISH, PRINCIPAL = "subscribe", "publish", "principal"


class NotHeld(enum.Enum):
    NOT_HELD = "not held"


NOT_HELD = NotHeld.NOT_HELD  # an answer that needs a look-up
CacheKey = tuple[int, str, str]  # (user, action, topic)
Answer = Audience | bool | None  # SUBSCRIBE: the audience (None refuses); PUBLISH: yes or no


class Authorizer:
    """core.access answers with a short per-(user, action, topic) cache, bounded in entries.

    The least recently used answers go first when the cache is full, so a user who
    subscribes to many topics cannot grow a replica's memory, nor evict everyone at once.
    """

    def __init__(
        self,
        directory: Directory,
        ttl_seconds: float,
        max_entries: int,
        timeout_seconds: float = 5.0,
    ) -> None:
        self.directory = directory
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self.timeout = timeout_seconds
        self._cache: OrderedDict[CacheKey, tuple[Answer, float]] = OrderedDict()
        self._by_user: dict[int, set[CacheKey]] = {}
        self._inflight: dict[CacheKey, asyncio.Future[object]] = {}

    def __len__(self) -> int:
        return max(len(self._cache), len(self.directory))

    async def audience(self, who: access.Principal, topic: str) -> Audience | None:
        """What ``who`` sees of ``topic`` (core.audience), or None: may not subscribe."""
        answer = await self._answer(who, SUBSCRIBE, topic)
        return answer if isinstance(answer, Audience) else None

    async def allowed(self, who: access.Principal, action: str, topic: str) -> bool:
        if action == SUBSCRIBE:
            return await self.audience(who, topic) is not None
        return await self._answer(who, PUBLISH, topic) is True

    def held_audience(self, who: access.Principal, topic: str) -> Audience | NotHeld | None:
        """``audience`` when it can be answered from memory at once, else NOT_HELD."""
        answer = self._held_answer(who, SUBSCRIBE, topic)
        return answer if answer is NOT_HELD or isinstance(answer, Audience) else None

    def _held_answer(self, who: access.Principal, action: str, topic: str) -> Answer | NotHeld:
        key = (who.user_id, action, topic)
        hit = self._cache.get(key)
        if hit is not None and hit[1] > time.monotonic():
            self._cache.move_to_end(key)
            return hit[0]
        rights = self.directory.held_rights(who.user_id)
        held, facts = self.directory.held_facts(topic)
        if rights is not None and held:  # decided from memory: no task, no time limit needed
            return self._decide(key, rights, action, topic, facts)
        return NOT_HELD

    async def _answer(self, who: access.Principal, action: str, topic: str) -> Answer:
        held = self._held_answer(who, action, topic)
        if held is not NOT_HELD:
            assert held is None or isinstance(held, Audience | bool)
            return held
        key = (who.user_id, action, topic)
        answer = await self._bounded(key, topic, self._look_up(key, who, action, topic))
        assert answer is None or isinstance(answer, Audience | bool)
        return answer

    async def _look_up(self, key: CacheKey, who: access.Principal, action: str, topic: str) -> Answer:
        rights, facts = await asyncio.gather(self.directory.rights(who.user_id), self.directory.facts(topic))
        return self._decide(key, rights, action, topic, facts)

    def _decide(
        self, key: CacheKey, rights: access.Rights | None, action: str, topic: str, facts: access.TopicFacts | None
    ) -> Answer:
        answer: Answer
        if rights is None:
            answer = None if action == SUBSCRIBE else False
        elif action == SUBSCRIBE:
            answer = access.decide_audience(rights, topic, facts)
        else:
            answer = access.decide_publish(rights, topic, facts)
        self._remember(key, answer)
        return answer

    async def _bounded(self, key: CacheKey, topic: str, look_up: Awaitable[object]) -> object:
        """The look-up's answer, shared with concurrent callers, or AuthorizationTimeout after the limit."""
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(look_up)
            self._inflight[key] = task
            task.add_done_callback(lambda done: self._settled(key, done))
        elif asyncio.iscoroutine(look_up):
            look_up.close()  # not needed: the running look-up answers this caller too
        started = time.monotonic()
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError:
            raise AuthorizationTimeout(key[1], topic, time.monotonic() - started) from None

    def _settled(self, key: CacheKey, task: asyncio.Future[object]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        if not task.cancelled() and task.exception() is not None:
            # Also seen by any caller still waiting; one that gave up is told by the time limit.
            log.debug("authorisation look-up failed", extra={"topic": key[2], "error": str(task.exception())})

    async def close(self) -> None:
        """Cancel look-ups still running (nobody waits for them any more)."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.wait(tasks, timeout=1.0)

    def _remember(self, key: CacheKey, answer: Answer) -> None:
        self._cache[key] = (answer, time.monotonic() + self.ttl)
        self._cache.move_to_end(key)
        self._by_user.setdefault(key[0], set()).add(key)
        while len(self._cache) > self.max_entries:
            old, _ = self._cache.popitem(last=False)
            self._forget_key(old)

    def _forget_key(self, key: CacheKey) -> None:
        keys_of_user = self._by_user.get(key[0])
        if keys_of_user is not None:
            keys_of_user.discard(key)
            if not keys_of_user:
                del self._by_user[key[0]]

    async def principal(self, user_id: int) -> access.Principal | None:
        answer = await self._bounded((user_id, PRINCIPAL, ""), f"user.{user_id}", self._principal(user_id))
        assert answer is None or isinstance(answer, access.Principal)
        return answer

    async def _principal(self, user_id: int) -> access.Principal | None:
        rights = await self.directory.rights(user_id)
        return None if rights is None else rights.principal

    def invalidate(self, user_id: int | None) -> None:
        """Forget one user's answers and rights, or everyone's with None."""
        self.directory.forget_user(user_id)
        if user_id is None:
            self._cache.clear()
            self._by_user.clear()
            return
        for key in self._by_user.pop(user_id, set()):
            self._cache.pop(key, None)
