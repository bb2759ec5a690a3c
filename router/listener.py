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
# Connections taken per readiness callback before other work gets a turn (asyncio's server: its backlog).
ACCEPTS_PER_WAKE = 100


class Gate:
    """Connections accepted and not yet welcomed (or gone), and whether one more may come in."""

    def __init__(self, bound: int) -> None:
        self.bound = bound
        self.inside = 0
        self.on_room: Callable[[], None] | None = None  # called when a full gate has room again

    @property
    def has_room(self) -> bool:
        return self.inside < self.bound

    def enter(self) -> None:
        self.inside += 1

    def leave(self) -> None:
        self.inside -= 1
        if self.inside == self.bound - 1 and self.on_room is not None:
            self.on_room()


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
        self._reading = False
        self._retry: asyncio.TimerHandle | None = None
        self._stopped = False
        gate.on_room = self._resume
        self._resume()
        self._sweeping = self._loop.create_task(self._keep_alive())

    def _resume(self) -> None:
        """Watch the listening socket again (there is room, or accept() may work again)."""
        self._retry = None
        if not self._reading and not self._stopped and self.gate.has_room:
            self._loop.add_reader(self.sock, self._accept_ready)
            self._reading = True

    def _pause(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.sock)
            self._reading = False

    def _accept_ready(self) -> None:
        """The listening socket is readable: take what is queued, while the gate has room.

        One reader for the socket's life, not one per accept (a future and two epoll changes each).
        """
        for _ in range(ACCEPTS_PER_WAKE):
            if not self.gate.has_room:
                self._pause()  # the gate's on_room resumes
                return
            try:
                client, _address = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as error:  # EMFILE, ENFILE, ENOBUFS: the connection stays queued; try later
                log.warning("accept failed; retrying shortly", extra={"error": str(error)})
                self._pause()
                self._retry = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume)
                return
            client.setblocking(False)
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
        self._stopped = True
        self._pause()
        if self._retry is not None:
            self._retry.cancel()
        self.sock.close()

    async def close(self, code: int = 1001) -> None:
        """Stop accepting, end every connection still open (going away), wait until all are gone."""
        if not self._stopped:
            self.stop_accepting()
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
