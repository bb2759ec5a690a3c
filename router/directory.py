"""What the handshake and SUBSCRIBE decisions need from the database, kept in memory and loaded in batches.

Opening a session needs the web session behind the ticket (its user, expiry, revocation) and the user's
rights (service or not, the role in each course); a SUBSCRIBE to an assignment or a submission needs
that row's course (and owner). Asking the database for each, per session, made the router open only a
few hundred sessions a second and churn its connection pool. Here:

- Look-ups of the same kind that arrive together are answered by one statement (``IN (...)``): a
  storm of reconnecting browsers costs one query per few hundred sessions, on one pooled connection.
- Web sessions and rights are kept ``ttl`` seconds (the periodic re-check interval). Through handin
  they are dropped at once: logout publishes the web session's id (and sets a Redis key the ticket
  check reads every time), enrolment changes publish the user's id (core.access.invalidate_access).
  Rows changed straight in the database are seen within ``ttl``, and the periodic re-check reloads
  the rights of every connected user, so an open socket keeps a removed right no longer than that.
- Topic facts (an assignment's course, a submission's owner and course) never change for a row's
  life and are kept until evicted (least recently used first, at most ``max_entries``). A row not
  found is never remembered: it may be created a moment later.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Hashable
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from sqlalchemy import String, any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.pool import QueuePool

from core import access
from core.db import autocommit
from core.models import Enrolment, User, WebSession

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")
BATCH_LIMIT = 500  # keys per statement

# Each web session with its user and the user's enrolments (a row per enrolment). Built once, with
# the ids as one parameter: a statement built per batch costs SQLAlchemy a comparison of every ORM
# column against its cached compiled form, more CPU than the query's answer. On PostgreSQL the ids
# are one array (= ANY): one statement text whatever the batch's size, prepared once per connection.
_WEB_SESSIONS_WITH_RIGHTS = (
    select(
        WebSession.id,
        WebSession.user_id,
        WebSession.expires_at,
        WebSession.revoked_at,
        User.is_service,
        Enrolment.course_id,
        Enrolment.role,
    )
    .join(User, User.id == WebSession.user_id)
    .outerjoin(Enrolment, Enrolment.user_id == User.id)
)
WEB_SESSIONS_WITH_RIGHTS = _WEB_SESSIONS_WITH_RIGHTS.where(WebSession.id.in_(bindparam("ids", expanding=True)))
WEB_SESSIONS_WITH_RIGHTS_POSTGRES = _WEB_SESSIONS_WITH_RIGHTS.where(
    WebSession.id == any_(bindparam("ids", type_=postgresql.ARRAY(String)))
)


class Batcher(Generic[K, V]):
    """Coalesce look-ups: keys asked for while a batch runs go into the next one, one statement each.

    At most one batch per kind runs at a time, so under load batches grow instead of connections.
    """

    def __init__(self, load: Callable[[list[K]], Awaitable[dict[K, V]]]) -> None:
        self._load = load
        self._waiting: dict[K, asyncio.Future[V | None]] = {}
        self._running: asyncio.Task[None] | None = None
        self.batches = 0

    def get(self, key: K) -> asyncio.Future[V | None]:
        # Shared by every caller of this key: one that gives up (a time limit) must not cancel it for the rest.
        return asyncio.shield(self.shared(key))

    def shared(self, key: K) -> asyncio.Future[V | None]:
        """The future every caller of ``key`` shares, for callbacks (which must never cancel it)."""
        future = self._waiting.get(key)
        if future is None:
            loop = asyncio.get_running_loop()
            future = loop.create_future()
            self._waiting[key] = future
            if self._running is None:
                self._running = loop.create_task(self._run())
        return future

    async def _run(self) -> None:
        await asyncio.sleep(0)  # let this loop turn's other callers join the batch
        try:
            while self._waiting:
                batch = dict(list(self._waiting.items())[:BATCH_LIMIT])
                for key in batch:
                    del self._waiting[key]
                self.batches += 1
                try:
                    found = await self._load(list(batch))
                except BaseException as error:
                    for future in batch.values():
                        if not future.done():
                            future.set_exception(error if isinstance(error, Exception) else RuntimeError("cancelled"))
                            future.exception()  # a caller that gave up (time limit) must not leave it unretrieved
                    if not isinstance(error, Exception):
                        raise
                    continue
                for key, future in batch.items():
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            self._running = None


@dataclass(frozen=True)
class WebSessionFacts:
    user_id: int
    expires_at: datetime
    revoked: bool


WebSessionAndRights = tuple[WebSessionFacts | None, access.Rights | None]


class Directory:
    def __init__(self, engine: AsyncEngine, ttl_seconds: float, max_entries: int) -> None:
        self.engine = engine
        postgres = engine.dialect.name == "postgresql"
        self._reads = autocommit(engine) if postgres else engine
        self._web_sessions_statement = WEB_SESSIONS_WITH_RIGHTS_POSTGRES if postgres else WEB_SESSIONS_WITH_RIGHTS
        self.ttl = ttl_seconds
        self.max_entries = max_entries
        self._web_sessions: dict[str, tuple[WebSessionFacts, float]] = {}
        self._rights: dict[int, tuple[access.Rights, float]] = {}
        self._facts: OrderedDict[tuple[str, int], access.TopicFacts] = OrderedDict()
        # Bumped by every invalidation: a load that began before one may have read the old row, and
        # is then answered but not kept (its answer is at most as old as the change itself).
        self._generation = 0
        self._web_session_loader: Batcher[str, tuple[WebSessionFacts, access.Rights | None]] = Batcher(
            self._load_web_sessions
        )
        self._rights_loader: Batcher[int, access.Rights] = Batcher(self._load_rights)
        self._facts_loader: Batcher[tuple[str, int], access.TopicFacts] = Batcher(self._load_facts)

    def __len__(self) -> int:
        return len(self._facts)

    @property
    def batches(self) -> int:
        """Statements sent so far (batches loaded), for tests and metrics."""
        return self._web_session_loader.batches + self._rights_loader.batches + self._facts_loader.batches

    async def warm_up(self) -> None:
        """Open the pool's connections and prepare the handshake's statements on each, before the
        router takes its first browser: after a restart every open page comes back at once, and
        connecting, the driver's type introspection and first compilations cost the first few
        hundred of them more than their sessions did."""
        pool = self._reads.pool
        count = pool.size() if isinstance(pool, QueuePool) else 1
        async with contextlib.AsyncExitStack() as connections:
            for _ in range(count):
                db = await connections.enter_async_context(self._reads.connect())
                await db.execute(self._web_sessions_statement, {"ids": [""]})  # ids that never match
                await db.execute(access.RIGHTS_OF_USERS, {"ids": [0]})

    # Web sessions -------------------------------------------------------------------------

    def held_web_session(self, session_id: str) -> WebSessionFacts | None:
        """The web session if held and fresh, without waiting (None: ask ``web_session``)."""
        hit = self._web_sessions.get(session_id)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    def load_web_session(self, session_id: str, then: Callable[[WebSessionAndRights | BaseException], None]) -> None:
        """Call ``then`` with the web session and its user's rights (None, None: no such session), or
        the error: loaded together, one statement per batch of handshakes, no task per caller."""
        generation = self._generation

        def loaded(future: asyncio.Future[tuple[WebSessionFacts, access.Rights | None] | None]) -> None:
            error = RuntimeError("cancelled") if future.cancelled() else future.exception()
            then(error if error is not None else self._keep(session_id, generation, future.result()))

        self._web_session_loader.shared(session_id).add_done_callback(loaded)

    def _keep(
        self, session_id: str, generation: int, found: tuple[WebSessionFacts, access.Rights | None] | None
    ) -> WebSessionAndRights:
        """Remember what was loaded, unless an invalidation came while it was being read."""
        if found is None:
            return None, None
        web_session, rights = found
        if generation == self._generation:
            now = time.monotonic()
            if not web_session.revoked:
                self._web_sessions[session_id] = (web_session, now + self.ttl)
                self._trim(self._web_sessions)
            if rights is not None:
                self._rights[rights.user_id] = (rights, now + self.ttl)
                self._trim(self._rights)
        return web_session, rights

    def forget_web_session(self, session_id: str) -> None:
        self._generation += 1
        self._web_sessions.pop(session_id, None)

    async def _load_web_sessions(self, ids: list[str]) -> dict[str, tuple[WebSessionFacts, access.Rights | None]]:
        async with self._connect() as db:
            rows = (await db.execute(self._web_sessions_statement, {"ids": ids})).all()
        sessions = {sid: WebSessionFacts(user, ends, revoked is not None) for sid, user, ends, revoked, *_ in rows}
        rights = access.rights_from((user, service, course, role) for _, user, _, _, service, course, role in rows)
        return {sid: (facts, rights.get(facts.user_id)) for sid, facts in sessions.items()}

    # Rights ---------------------------------------------------------------------------------

    def held_rights(self, user_id: int) -> access.Rights | None:
        """The user's rights if held and fresh, without waiting (None: ask ``rights``)."""
        hit = self._rights.get(user_id)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None

    async def rights(self, user_id: int) -> access.Rights | None:
        held = self.held_rights(user_id)
        if held is not None:
            return held
        return await self._fetch_rights(user_id)

    async def _fetch_rights(self, user_id: int) -> access.Rights | None:
        generation = self._generation
        found = await self._rights_loader.get(user_id)
        if found is None:
            self._rights.pop(user_id, None)
        elif generation == self._generation:
            self._rights[user_id] = (found, time.monotonic() + self.ttl)
            self._trim(self._rights)
        return found

    async def refresh(self, user_ids: Collection[int]) -> None:
        """Reload these users' rights from the database (the periodic re-check), in batches."""
        for user_id in user_ids:
            self._rights.pop(user_id, None)
        await asyncio.gather(*(self._fetch_rights(user_id) for user_id in user_ids))

    def forget_user(self, user_id: int | None) -> None:
        """Rights changed through handin: drop one user's rights, or everyone's (None)."""
        self._generation += 1
        if user_id is None:
            self._rights.clear()
        else:
            self._rights.pop(user_id, None)

    async def _load_rights(self, user_ids: list[int]) -> dict[int, access.Rights]:
        async with self._connect() as db:
            return await access.rights_of(db, user_ids)

    # Topic facts ----------------------------------------------------------------------------

    def held_facts(self, topic: str) -> tuple[bool, access.TopicFacts | None]:
        """(True, facts) when deciding ``topic`` needs nothing from the database; (False, None) otherwise."""
        wanted = access.needs_facts(topic)
        if wanted is None:
            return True, None
        hit = self._facts.get(wanted)
        if hit is None:
            return False, None
        self._facts.move_to_end(wanted)
        return True, hit

    async def facts(self, topic: str) -> access.TopicFacts | None:
        held, facts = self.held_facts(topic)
        if held:
            return facts
        wanted = access.needs_facts(topic)
        assert wanted is not None
        found = await self._facts_loader.get(wanted)
        if found is not None:
            self._facts[wanted] = found
            while len(self._facts) > self.max_entries:
                self._facts.popitem(last=False)
        return found

    async def _load_facts(self, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], access.TopicFacts]:
        async with self._connect() as db:
            return await access.facts_of(db, wanted)

    def _connect(self) -> AsyncConnection:
        # Plain statements on a pooled connection: no ORM session to set up per batch. One read
        # each, so on PostgreSQL no transaction either: BEGIN and ROLLBACK were two of a batch's
        # four round trips.
        return self._reads.connect()

    def _trim(self, cache: dict[K, tuple[V, float]]) -> None:
        """Bounded: past max_entries, drop expired entries, then the oldest inserted."""
        if len(cache) <= self.max_entries:
            return
        now = time.monotonic()
        for key in [k for k, (_v, until) in cache.items() if until <= now]:
            del cache[key]
        while len(cache) > self.max_entries:
            del cache[next(iter(cache))]
