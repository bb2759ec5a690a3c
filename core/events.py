"""The event bus: append to the audit trail, then publish the envelope to Redis.

Every state change is one event. The row is written in the caller's
transaction with the next per-topic ``seq``; publishing happens after commit,
so a subscriber never sees an event the database does not have. If Redis is
down the event is still in the audit trail and pages catch up with
``after=seq``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from sqlalchemy import BigInteger, DateTime, String, Table, Text, bindparam, select, text
from sqlalchemy import insert as sa_insert
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core import keys
from core.clock import isoformat, utcnow
from core.db import driver_rows, is_postgres, postgres_engine
from core.models import Event, TopicSeq

log = logging.getLogger(__name__)

_events: Table = Event.__table__  # type: ignore[assignment]


@dataclass
class Envelope:
    seq: int
    topic: str
    type: str
    at: str
    data: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "topic": self.topic, "type": self.type, "at": self.at, "data": self.data}

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), separators=(",", ":"))

    @classmethod
    def from_event(cls, row: Event) -> Envelope:
        return cls(seq=row.seq, topic=row.topic, type=row.type, at=isoformat(row.at), data=row.data)


async def record(
    session: AsyncSession,
    topic: str,
    type: str,
    data: dict[str, Any] | None = None,
    *,
    actor: str = "system",
    actor_id: int | None = None,
) -> Envelope:
    """Append one audit event in the caller's transaction and return its envelope.

    The batch writer with a batch of one: on PostgreSQL the seq bump and the
    row are one statement; elsewhere two.
    """
    (envelope,) = await write_events(session, [PendingEvent(topic, type, utcnow(), data or {}, actor, actor_id)])
    return envelope


@dataclass
class PendingEvent:
    """An event staged in a transaction, written with the others at the next flush."""

    topic: str
    type: str
    at: datetime
    data: dict[str, Any]
    actor: str
    actor_id: int | None


# PostgreSQL: every staged event of a transaction in one statement. `input` numbers the events
# in the order they were staged; `bumped` moves each topic's seq on by its count of events (one
# row per topic, in topic order, so two transactions bumping the same topics lock them in the
# same order); each event gets the topic's old seq plus its rank among that topic's events.
# The row lock on topic_seqs is held to commit, so a topic's seq stays gapless and in commit order.
_STAGED_ARRAYS = """SELECT * FROM unnest(:topics, :types, :ats, :datas, :actors, :actor_ids)
            WITH ORDINALITY AS staged(topic, type, at, data, actor, actor_id, ord)"""


def events_ctes(after: str | None = None, staged_from: str = _STAGED_ARRAYS) -> str:
    """The CTEs (no WITH) that write the statement's events; ``bumped`` answers (topic, seq).

    ``after`` names a one-row CTE of the same statement that the seq bump waits for: rows it
    writes are locked before the topics' seq rows, the order every other writer takes them in.
    ``staged_from``: the SELECT giving the events as (topic, type, at, data as JSON text, actor,
    actor_id, ord); by default the arrays of ``event_arrays``, unnested.
    """
    gate = f" CROSS JOIN {after}" if after else ""
    return f"""
    input AS (
        {staged_from}
    ), counts AS (
        SELECT topic, count(*) AS n FROM input{gate} GROUP BY topic
    ), bumped AS (
        INSERT INTO topic_seqs (topic, seq)
        SELECT topic, n FROM counts ORDER BY topic
        ON CONFLICT (topic) DO UPDATE SET seq = topic_seqs.seq + excluded.seq
        RETURNING topic, seq
    ), written AS (
        INSERT INTO events (topic, seq, type, at, data, actor, actor_id)
        SELECT input.topic,
               bumped.seq - counts.n + row_number() OVER (PARTITION BY input.topic ORDER BY input.ord),
               input.type, input.at, CAST(input.data AS json), input.actor, input.actor_id
        FROM input JOIN counts USING (topic) JOIN bumped USING (topic)
        ORDER BY input.ord
    )"""


EVENT_ARRAYS = (
    bindparam("topics", type_=ARRAY(String)),
    bindparam("types", type_=ARRAY(String)),
    bindparam("ats", type_=ARRAY(DateTime(timezone=True))),
    bindparam("datas", type_=ARRAY(Text)),
    bindparam("actors", type_=ARRAY(String)),
    bindparam("actor_ids", type_=ARRAY(BigInteger)),
)
_WRITE_EVENTS = text(f"WITH {events_ctes()} SELECT topic, seq FROM bumped").bindparams(*EVENT_ARRAYS)


def event_arrays(staged: list[PendingEvent]) -> dict[str, list[Any]]:
    """The staged events as the arrays events_ctes() unnests."""
    return {
        "topics": [event.topic for event in staged],
        "types": [event.type for event in staged],
        "ats": [event.at for event in staged],
        "datas": [json.dumps(event.data, separators=(",", ":")) for event in staged],
        "actors": [event.actor for event in staged],
        "actor_ids": [event.actor_id for event in staged],
    }


def envelopes_of(staged: list[PendingEvent], last: dict[str, int]) -> list[Envelope]:
    """The staged events' envelopes, given each topic's last seq after the bump."""
    counts: dict[str, int] = {}
    for event in staged:
        counts[event.topic] = counts.get(event.topic, 0) + 1
    next_seq = {topic: last[topic] - count + 1 for topic, count in counts.items()}
    envelopes: list[Envelope] = []
    for event in staged:
        seq = next_seq[event.topic]
        next_seq[event.topic] = seq + 1
        envelopes.append(Envelope(seq=seq, topic=event.topic, type=event.type, at=isoformat(event.at), data=event.data))
    return envelopes


async def emit_on_its_own(
    sessions: async_sessionmaker[AsyncSession],
    redis: Redis,
    topic: str,
    type: str,
    data: dict[str, Any] | None = None,
    *,
    actor: str = "system",
) -> Envelope:
    """One event in a transaction of its own, then published (a step's progress).

    On PostgreSQL one statement on the pool's asyncpg connection (``core.db.driver_connection``);
    elsewhere a transaction of the sessions'.
    """
    staged = [PendingEvent(topic, type, utcnow(), data or {}, actor, None)]
    engine = postgres_engine(sessions)
    if engine is not None:
        rows = await driver_rows(engine, _WRITE_EVENTS, event_arrays(staged))
        envelopes = envelopes_of(staged, {row["topic"]: int(row["seq"]) for row in rows})
    else:
        async with sessions() as session, session.begin():
            envelopes = await write_events(session, staged)
    await publish(redis, envelopes)
    return envelopes[0]


# SQLite: a topic's seq moved on by n (its writers are serialised by the database lock).
_SQLITE_BUMP = (
    sqlite_insert(TopicSeq)
    .values(topic=bindparam("topic"), seq=bindparam("n"))
    .on_conflict_do_update(index_elements=[TopicSeq.topic], set_={"seq": TopicSeq.seq + bindparam("n")})
    .returning(TopicSeq.seq)
)


async def write_events(session: AsyncSession, staged: list[PendingEvent]) -> list[Envelope]:
    """Append staged events in the caller's transaction, in order; their envelopes.

    On PostgreSQL one statement whatever the number of events and topics; on SQLite
    (whose writers are serialised by the database lock) one seq bump per topic and
    one multi-row insert.
    """
    if not staged:
        return []
    if is_postgres(session):
        result = await session.execute(_WRITE_EVENTS, event_arrays(staged))
        return envelopes_of(staged, {row.topic: int(row.seq) for row in result})
    counts: dict[str, int] = {}
    for event in staged:
        counts[event.topic] = counts.get(event.topic, 0) + 1
    last: dict[str, int] = {}
    for topic in sorted(counts):
        bumped = await session.execute(_SQLITE_BUMP, {"topic": topic, "n": counts[topic]})
        last[topic] = int(bumped.scalar_one())
    envelopes = envelopes_of(staged, last)
    await session.execute(
        sa_insert(_events),
        [
            {
                "topic": event.topic,
                "seq": envelope.seq,
                "type": event.type,
                "at": event.at,
                "data": event.data,
                "actor": event.actor,
                "actor_id": event.actor_id,
            }
            for event, envelope in zip(staged, envelopes, strict=True)
        ],
    )
    return envelopes


class HeldBack:
    """Committed events a worker's job holds back (a quick step's start, workers.runner): sent
    before anything else the job publishes, or with its finish (workers.run). Its publishes take
    turns (the lock), so the page gets the job's events in the order they were committed."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.turn = asyncio.Lock()

    def take(self) -> list[Envelope]:
        taken, self.envelopes = self.envelopes, []
        return taken


# Set per job by the worker; None elsewhere, where everything is published at once.
HELD_BACK: ContextVar[HeldBack | None] = ContextVar("held_back_events", default=None)


def hold_back(envelopes: list[Envelope]) -> bool:
    """Keep committed ``envelopes`` for this job's next publish; False when nothing holds them."""
    held = HELD_BACK.get()
    if held is None:
        return False
    held.envelopes.extend(envelopes)
    return True


def take_held_back() -> list[Envelope]:
    """The events this job held back so far (in order), no longer held (when nothing else of the
    job can be publishing: its finish)."""
    held = HELD_BACK.get()
    return held.take() if held is not None else []


@asynccontextmanager
async def publishing_turn() -> AsyncIterator[list[Envelope]]:
    """This job's turn to publish, the turns taken in order, and the events it held back, which go
    first; outside a worker's job no turn is waited for and nothing is held."""
    held = HELD_BACK.get()
    if held is None:
        yield []
        return
    async with held.turn:
        yield held.take()


async def publish(redis: Redis, envelopes: list[Envelope]) -> None:
    """Publish committed events, after any this job held back; a Redis failure is logged, never raised.

    Shielded: the events are committed, so a caller cancelled meanwhile (a
    worker shutting down) must not leave them half sent or the pipeline's
    connection checked out.
    """
    async with publishing_turn() as first:
        if first or envelopes:
            await asyncio.shield(_publish(redis, first + envelopes))


def queue_publishes(pipe: Pipeline, envelopes: Iterable[Envelope]) -> None:
    """Add each envelope's PUBLISH, on its topic's channel, to `pipe`."""
    for envelope in envelopes:
        pipe.publish(keys.events_channel(envelope.topic), envelope.to_json())


async def _publish(redis: Redis, envelopes: list[Envelope]) -> None:
    try:
        async with redis.pipeline(transaction=False) as pipe:
            queue_publishes(pipe, envelopes)
            await pipe.execute()
    except (RedisError, OSError) as error:
        log.warning("event publish failed; audit trail has them", extra={"error": str(error)})


async def events_after(session: AsyncSession, topic: str, after: int, limit: int = 500) -> list[Envelope]:
    rows = await session.scalars(
        select(Event).where(Event.topic == topic, Event.seq > after).order_by(Event.seq).limit(limit)
    )
    return [Envelope.from_event(row) for row in rows]


class StagedEvents:
    """Events noted in a transaction, to be written together in one statement."""

    def __init__(self) -> None:
        self.envelopes: list[Envelope] = []
        self.staged: list[PendingEvent] = []

    def stage(
        self,
        topic: str,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        actor: str = "system",
        actor_id: int | None = None,
    ) -> None:
        self.staged.append(PendingEvent(topic, type, utcnow(), data or {}, actor, actor_id))


class EventBatch(StagedEvents):
    """Collects envelopes recorded in one transaction, to publish after commit.

    ``emit`` writes the event at once and returns its envelope (with its seq).
    ``stage`` only notes it; staged events are written together, in one
    statement, by ``flush`` — which ``emit`` calls first, to keep the order, and
    which the unit of work calls before it commits.
    """

    def __init__(self, session: AsyncSession) -> None:
        super().__init__()
        self.session = session

    async def emit(
        self,
        topic: str,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        actor: str = "system",
        actor_id: int | None = None,
    ) -> Envelope:
        await self.flush()
        envelope = await record(self.session, topic, type, data, actor=actor, actor_id=actor_id)
        self.envelopes.append(envelope)
        return envelope

    async def flush(self) -> None:
        """Write the staged events (one statement on PostgreSQL)."""
        if self.staged:
            staged, self.staged = self.staged, []
            self.envelopes.extend(await write_events(self.session, staged))

    async def publish(self, redis: Redis) -> None:
        await publish(redis, self.envelopes)
        self.envelopes = []
