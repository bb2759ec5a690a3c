"""Which asyncio event loop a process runs on."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Literal

EventLoopName = Literal["uvloop", "asyncio"]


def event_loop_factory(name: EventLoopName) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop runs the loop and its sockets' reads and writes in C; None: the standard library's loop."""
    if name == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return None
