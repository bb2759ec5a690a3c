"""When to tell a refused client to come back.

Past the bound of handshakes in progress the router answers an upgrade with 503 at once. If every
refused client came back after the same few seconds, a storm would return as a storm, and each
refusal costs the router nearly what a session does (accept, HTTP parse, answer, close). So each
refused client gets its own slot: slots are handed out in order, one per 1/rate seconds, where rate is
how many sessions the router has been welcoming per second (with headroom, so the rate can grow);
Retry-After says when that slot comes.
Clients that honour it (the bench, service clients; browsers through ABORT details.retry_after) come
back about when there is room for them.
"""

from __future__ import annotations

import math
import time

MIN_RATE = 50.0  # sessions/s assumed at least, so one slow second doesn't send everyone away for minutes
# Slots come this much faster than the measured rate: the rate is what was welcomed, which the slots
# themselves limit, so without headroom it could never grow back after a slow second.
HEADROOM = 1.5


class Admission:
    def __init__(self, floor_seconds: int, max_seconds: int = 60) -> None:
        self.floor = floor_seconds
        self.max = max_seconds
        self.rate = 100.0  # sessions welcomed per second, smoothed
        self._count = 0
        self._since = time.monotonic()
        self._next_slot = 0.0

    def welcomed(self) -> None:
        self._count += 1

    def retry_after(self) -> int:
        """Seconds until this refused client's slot (at least the floor, at most the cap)."""
        now = time.monotonic()
        elapsed = now - self._since
        if elapsed >= 1.0:
            self.rate = 0.5 * self.rate + 0.5 * (self._count / elapsed)
            self._count, self._since = 0, now
        slot = max(self._next_slot, now + self.floor)
        self._next_slot = slot + 1.0 / max(self.rate * HEADROOM, MIN_RATE)
        return min(self.max, math.ceil(slot - now))
