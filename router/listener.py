"""The router's listening socket: connections are accepted only while there is room for them.

A router restart brings every open page back at once. Accepting them all and answering the excess
"not now" (HTTP 503) costs the router about half a session per refusal (accept, HTTP parse, answer,
close), and a storm of refusals is what kept a busy router from welcoming anyone. So the router
accepts a connection only while fewer than a bound are between accept and WELCOME; later arrivals
wait in the kernel's listen queue, at no cost to the router, and are taken in arrival order as
sessions are welcomed. Past the listen backlog the kernel drops SYNs and clients' TCP retransmits
them, which spaces their return without any work here.

asyncio's Server cannot pause accepting, so this is a small accept loop of its own. It also sweeps
every connection's keepalive at once (router/connection.py), instead of a timer task per connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable

from router.connection import WebSocketConnection

log = logging.getLogger("router")

# asyncio's own pause after accept() fails for want of file descriptors or buffers.
ACCEPT_RETRY_SECONDS = 1.0


class Gate:
    """Connections accepted and not yet welcomed (or gone), and whether one more may come in."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.inside = 0
        self._room = asyncio.Event()
        self._room.set()

    def enter(self) -> None:
        self.inside += 1
        if self.inside >= self.bound:
            self._room.clear()

    def leave(self) -> None:
        self.inside -= 1
        if self.inside < self.bound:
            self._room.set()

    async def room(self) -> None:
        await self._room.wait()


class Listener:
    """Accepts on `sock` while `gate` has room, one WebSocketConnection per socket; keeps them alive."""

    def __init__(
        self,
        sock: socket.socket,
        gate: Gate,
        make_connection: Callable[[set[WebSocketConnection]], WebSocketConnection],
        *,
        ping_interval: float,
        ping_timeout: float,
    ) -> None:
        self.sock = sock
        self.gate = gate
        self.connections: set[WebSocketConnection] = set()
        self._make_connection = make_connection
        self._ping_interval = ping_interval
        self._ping_timeout = ping_timeout
        self._loop = asyncio.get_running_loop()
        self._starting: set[asyncio.Task[None]] = set()
        self._accepting = self._loop.create_task(self._accept_forever())
        self._sweeping = self._loop.create_task(self._keep_alive())

    async def _accept_forever(self) -> None:
        while True:
            await self.gate.room()
            try:
                client, _address = await self._loop.sock_accept(self.sock)
            except OSError as error:  # EMFILE, ENFILE, ENOBUFS: the connection stays queued; try later
                log.warning("accept failed; retrying shortly", extra={"error": str(error)})
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            self.gate.enter()
            task = self._loop.create_task(self._start(client))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, client: socket.socket) -> None:
        made: list[WebSocketConnection] = []

        def connection() -> WebSocketConnection:
            made.append(self._make_connection(self.connections))
            return made[0]

        try:
            await self._loop.connect_accepted_socket(connection, client)
        except (OSError, RuntimeError):  # reset before its transport existed, or the loop is closing
            with contextlib.suppress(OSError):  # uvloop may have taken the descriptor already
                client.close()
            if made:
                made[0].admitted()
            else:
                self.gate.leave()

    async def _keep_alive(self) -> None:
        """Ping each open connection every ping_interval; close one whose pong is ping_timeout late."""
        tick = max(0.05, min(self._ping_interval, self._ping_timeout) / 4)
        while True:
            await asyncio.sleep(tick)
            now = self._loop.time()
            for connection in list(self.connections):
                connection.keepalive(now, self._ping_interval, self._ping_timeout)

    @property
    def sockets(self) -> tuple[socket.socket]:
        return (self.sock,)

    def stop_accepting(self) -> None:
        self._accepting.cancel()
        self.sock.close()

    async def close(self, code: int = 1001) -> None:
        """Stop accepting, end every connection still open (going away), wait until all are gone."""
        self.stop_accepting()
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        if self._starting:
            await asyncio.wait(list(self._starting))
        closing = [asyncio.ensure_future(connection.close(code)) for connection in list(self.connections)]
        if closing:
            await asyncio.wait(closing)
        self._sweeping.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._sweeping


def waiting_to_be_accepted(sock: socket.socket) -> int | None:
    """Connections the kernel holds in the listen queue of `sock` (Linux), or None where unknown."""
    # For a listening socket Linux reports the accept queue's length as tcp_info.tcpi_unacked, the
    # u32 after eight u8 fields and four u32 ones.
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 32)
    except (AttributeError, OSError):
        return None
    return int(struct.unpack_from("I", info, 24)[0]) if len(info) >= 28 else None


def listening_socket(host: str, port: int, backlog: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.create_server((host, port), family=family, backlog=backlog, reuse_port=False)
    sock.setblocking(False)
    return sock
