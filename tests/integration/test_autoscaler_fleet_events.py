"""The autoscaler tells the dashboard what changes, not that nothing did: fleet events per cycle."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from autoscaler.main import Autoscaler
from core import keys
from core.models import Event
from core.settings import Settings
from tests.fixtures.fleet import Fleet

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


async def fleet_events(sessions: async_sessionmaker[AsyncSession]) -> list[Event]:
    async with sessions() as session:
        rows = await session.scalars(select(Event).where(Event.topic == keys.FLEET_TOPIC).order_by(Event.seq))
        return list(rows)


async def test_a_steady_fleet_publishes_once_and_then_only_changes(
    settings: Settings, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    fleet = Fleet(keys.TASKS, 1)  # every pool at its minimum, nothing queued, no deadline ahead
    scaler = Autoscaler(settings, redis, sessions, fleet)

    for _ in range(3):
        assert not any(d.changed for d in await scaler.cycle())
    (first,) = await fleet_events(sessions)
    assert first.data["changed"] == []
    assert {pool["pool"] for pool in first.data["pools"]} == set(keys.TASKS)  # the fleet as found

    fleet.replicas["scan"] = 0  # its worker went away: back to the minimum
    await scaler.cycle()
    await scaler.cycle()  # steady again
    events = await fleet_events(sessions)
    assert len(events) == 2, [e.data["changed"] for e in events]
    assert events[1].data["changed"] == ["scan"]
    scan = next(pool for pool in events[1].data["pools"] if pool["pool"] == "scan")
    assert (scan["current"], scan["desired"]) == (0, 1)


async def test_a_change_decided_again_and_again_is_published_once(
    settings: Settings, redis: Redis, sessions: async_sessionmaker[AsyncSession]
) -> None:
    fleet = Fleet(keys.TASKS, 1)
    fleet.replicas["scan"] = 0
    scaler = Autoscaler(settings, redis, sessions, fleet)

    for _ in range(3):  # a dry run decides scan 0→1 every cycle and never applies it
        await scaler.cycle(dry_run=True)
    (event,) = await fleet_events(sessions)
    assert event.data["changed"] == ["scan"] and event.data["dry_run"] is True
