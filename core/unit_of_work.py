"""One unit of work: a transaction, the events it records, commit, then publish.

Every state change is written the same way: open (or continue) a
transaction, change rows and ``emit`` their events into the audit trail,
commit, and only then publish the events to Redis, so a subscriber never
sees an event the database does not have::

    async with unit_of_work(sessions, redis) as work:
        work.session.add(row)
        await work.emit(topic, "thing.happened", {...})

The source is a sessionmaker (a session of its own, closed at the end) or a
session already in use, such as a request's: a handler that has read through
its session writes through the same one, so it never waits on itself for
SQLite's write lock (every SQLite transaction begins ``BEGIN IMMEDIATE``).
An exception inside the block rolls back and publishes nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, nullcontext

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.events import EventBatch

SessionSource = AsyncSession | async_sessionmaker[AsyncSession]


class UnitOfWork(EventBatch):
    """The transaction's session and the events emitted in it (an ``EventBatch``)."""


@asynccontextmanager
async def unit_of_work(source: SessionSource, redis: Redis | None) -> AsyncIterator[UnitOfWork]:
    """Commit what the block did, then publish its events to ``redis``.

    ``redis=None`` commits without publishing: the caller publishes with
    ``await work.publish(redis)`` when it is ready (the router first notes
    the publisher's own exclusion). Publishing is shielded from cancellation
    and never raises for Redis being down (see ``core.events.publish``).
    """
    opened: AbstractAsyncContextManager[AsyncSession] = (
        nullcontext(source) if isinstance(source, AsyncSession) else source()
    )
    async with opened as session:
        work = UnitOfWork(session)
        try:
            yield work
            await work.flush()
        except BaseException:
            await session.rollback()
            raise
        # A session used only for reads before the block autobegan its transaction: this ends it too.
        await session.commit()
    if redis is not None:
        await work.publish(redis)
