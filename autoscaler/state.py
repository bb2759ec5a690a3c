"""What the autoscaler remembers between cycles, kept in Redis so a restart or a new leader continues.

Per pool: the rate meter (last counter reading, arrival rate, learned
service time), the recommendations still inside the scale-down window (the
holds), and the last decision. Without it a new leader saw no arrivals on
its first cycle and cut pools 20 → 1 seconds before a deadline.

One hash, one field per pool, JSON values; it expires after a day unused.
Its field ``HISTORY_FIELD`` holds the arrival curves learned from past
assignments (autoscaler.history), so a new leader need not refit at once.
A state that cannot be read or written (Redis down) is logged and the
in-memory copy is used: the cycle itself never fails on it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from autoscaler.policy import Recommendation
from core import keys

log = logging.getLogger(__name__)

STATE_TTL_SECONDS = 24 * 3600
HISTORY_FIELD = "history"  # not a pool: the learned arrival curves


@dataclass
class PoolState:
    meter: dict[str, Any] = field(default_factory=dict)
    history: tuple[Recommendation, ...] = ()
    last: dict[str, Any] | None = None

    def dumps(self) -> str:
        return json.dumps(
            {"meter": self.meter, "history": [[r.at, r.replicas] for r in self.history], "last": self.last}
        )

    @classmethod
    def loads(cls, raw: str | bytes) -> PoolState:
        data = json.loads(raw)
        history = tuple(Recommendation(float(at), int(replicas)) for at, replicas in data.get("history") or [])
        meter = data.get("meter")
        last = data.get("last")
        return cls(
            meter=meter if isinstance(meter, dict) else {},
            history=history,
            last=last if isinstance(last, dict) else None,
        )


class StateStore:
    def __init__(self, redis: Redis, key: str = keys.AUTOSCALER_STATE) -> None:
        self.redis = redis
        self.key = key

    async def load(self) -> dict[str, PoolState] | None:
        """Every pool's saved state; None if Redis could not be read (keep what is in memory)."""
        try:
            raw: dict[bytes, bytes] = await self.redis.hgetall(self.key)  # type: ignore[misc]
        except Exception as error:
            log.warning("autoscaler state unreadable; continuing from memory", extra={"error": str(error)[:300]})
            return None
        states: dict[str, PoolState] = {}
        for name, value in raw.items():
            if name.decode() == HISTORY_FIELD:
                continue
            try:
                states[name.decode()] = PoolState.loads(value)
            except (ValueError, TypeError, AttributeError):
                log.warning("autoscaler state of a pool unreadable; starting it afresh", extra={"pool": name})
        return states

    async def save(self, states: dict[str, PoolState]) -> bool:
        if not states:
            return True
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.key, mapping={task: state.dumps() for task, state in states.items()})
            pipe.expire(self.key, STATE_TTL_SECONDS)
            await pipe.execute()
        except Exception as error:
            log.warning("autoscaler state not saved", extra={"error": str(error)[:300]})
            return False
        return True

    async def load_history(self) -> dict[str, Any] | None:
        """The saved learned curves; None if there are none or Redis could not be read."""
        try:
            raw = await self.redis.hget(self.key, HISTORY_FIELD)  # type: ignore[misc]
        except Exception as error:
            log.warning("learned arrival curves unreadable", extra={"error": str(error)[:300]})
            return None
        if raw is None:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def save_history(self, history: dict[str, Any]) -> bool:
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.hset(self.key, HISTORY_FIELD, json.dumps(history))
            pipe.expire(self.key, STATE_TTL_SECONDS)
            await pipe.execute()
        except Exception as error:
            log.warning("learned arrival curves not saved", extra={"error": str(error)[:300]})
            return False
        return True
