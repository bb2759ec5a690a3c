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
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import insert as sa_insert
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from core import keys
from core.clock import isoformat, utcnow
from core.models import Event, TopicSeq

log = logging.getLogger(__name__)


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


def _seq_bump(dialect: str, topic: str) -> Any:
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    return (
        insert(TopicSeq)
        .values(topic=topic, seq=1)
        .on_conflict_do_update(index_elements=[TopicSeq.topic], set_={"seq": TopicSeq.seq + 1})
        .returning(TopicSeq.seq)
    )


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"


async def next_seq(session: AsyncSession, topic: str) -> int:
    """Bump and return the topic's seq; the row lock orders concurrent writers."""
    return int((await session.execute(_seq_bump(_dialect(session), topic))).scalar_one())


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

    On PostgreSQL the seq bump and the row are one statement (the bump is a
    data-modifying CTE); elsewhere two. Core statements either way: no ORM
    flush per event.
    """
    at, data = utcnow(), data or {}
    values: dict[str, Any] = {
        "topic": topic, "type": type, "at": at, "data": data, "actor": actor, "actor_id": actor_id
    }
    dialect = _dialect(session)
    if dialect == "postgresql":
        bumped = _seq_bump(dialect, topic).cte("bumped")
        statement = (
            sa_insert(Event)
            .values(seq=select(bumped.c.seq).scalar_subquery(), **values)
            .add_cte(bumped)
            .returning(Event.seq)
        )
        seq = int((await session.execute(statement)).scalar_one())
    else:
        seq = await next_seq(session, topic)
        await session.execute(sa_insert(Event).values(seq=seq, **values))
    return Envelope(seq=seq, topic=topic, type=type, at=isoformat(at), data=data)


async def publish(redis: Redis, envelopes: list[Envelope]) -> None:
    """Publish committed events; a Redis failure is logged, never raised.

    Shielded: the events are committed, so a caller cancelled meanwhile (a
    worker shutting down) must not leave them half sent or the pipeline's
    connection checked out.
    """
    if envelopes:
        await asyncio.shield(_publish(redis, envelopes))


async def _publish(redis: Redis, envelopes: list[Envelope]) -> None:
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for envelope in envelopes:
                pipe.publish(keys.events_channel(envelope.topic), envelope.to_json())
            await pipe.execute()
    except (RedisError, OSError) as error:
        log.warning("event publish failed; audit trail has them", extra={"error": str(error)})


async def events_after(session: AsyncSession, topic: str, after: int, limit: int = 500) -> list[Envelope]:
    rows = await session.scalars(
        select(Event).where(Event.topic == topic, Event.seq > after).order_by(Event.seq).limit(limit)
    )
    return [Envelope.from_event(row) for row in rows]


class EventBatch:
    """Collects envelopes recorded in one transaction, to publish after commit."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session
        self.envelopes: list[Envelope] = []

    async def emit(
        self,
        topic: str,
        type: str,
        data: dict[str, Any] | None = None,
        *,
        actor: str = "system",
        actor_id: int | None = None,
    ) -> Envelope:
        envelope = await record(self.session, topic, type, data, actor=actor, actor_id=actor_id)
        self.envelopes.append(envelope)
        return envelope

    async def publish(self, redis: Redis) -> None:
        await publish(redis, self.envelopes)
        self.envelopes = []
