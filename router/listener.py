"""The router's listening socket: connections are accepted only while there is room for them.

A router restart brings every open page back at once. Accepting them all and answering the excess
"not now" (HTTP 503) costs the router about half a session per refusal (accept, HTTP parse, answer,
close), and a storm of refusals is what kept a busy router from welcoming anyone. So the router
accepts a connection only while fewer than a bound are between accept and WELCOME; later arrivals
wait in the kernel's listen queue, at no cost to the router, and are taken in arrival order as
sessions are welcomed. Past the listen backlog the kernel drops SYNs and clients' TCP retransmits
them, which spaces their return without any work here.

asyncio's Server cannot pause accepting, so this is a small accept loop of its own. It hands each
socket to websockets and offers websockets' Server the few parts of asyncio.Server it uses, so
websockets still owns each connection's handshake, keepalive and closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.server import ServerProtocol

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


class GatedConnection(ServerConnection):
    """A connection counted in its gate until the router welcomes its session or it closes."""

    gate: Gate | None = None

    def admitted(self) -> None:
        if self.gate is not None:
            self.gate.leave()
            self.gate = None

    def connection_lost(self, exc: Exception | None) -> None:
        self.admitted()
        super().connection_lost(exc)


class GatedListener:
    """Accepts on `sock` while `gate` has room; the parts of asyncio.Server websockets' Server uses."""

    def __init__(self, sock: socket.socket, make_connection: Callable[[], GatedConnection], gate: Gate) -> None:
        self._sock = sock
        self._make_connection = make_connection
        self.gate = gate
        self._loop = asyncio.get_running_loop()
        self._starting: set[asyncio.Task[None]] = set()
        self._accepting = self._loop.create_task(self._accept_forever())

    async def _accept_forever(self) -> None:
        while True:
            await self.gate.room()
            try:
                client, _address = await self._loop.sock_accept(self._sock)
            except OSError as error:  # EMFILE, ENFILE, ENOBUFS: the connection stays queued; try later
                log.warning("accept failed; retrying shortly", extra={"error": str(error)})
                await asyncio.sleep(ACCEPT_RETRY_SECONDS)
                continue
            self.gate.enter()
            task = self._loop.create_task(self._start(client))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, client: socket.socket) -> None:
        made: list[GatedConnection] = []

        def connection() -> GatedConnection:
            made.append(self._make_connection())
            made[0].gate = self.gate
            return made[0]

        try:
            await self._loop.connect_accepted_socket(connection, client)
        except (OSError, RuntimeError):  # reset before its transport existed, or the loop is closing
            client.close()
            if made:
                made[0].admitted()
            else:
                self.gate.leave()

    # What websockets' Server calls on the asyncio.Server it wraps.

    @property
    def sockets(self) -> Iterable[socket.socket]:
        return (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return not self._accepting.done()

    def close(self) -> None:
        self._accepting.cancel()
        self._sock.close()

    async def wait_closed(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await self._accepting
        if self._starting:
            await asyncio.wait(list(self._starting))


class QuietClientDepartures(logging.Filter):
    """Drop websockets' "opening handshake failed" records for clients that left mid-handshake.

    During a storm browsers give up and come back by the thousand; each departure is logged at
    ERROR with a traceback otherwise, which costs the router CPU when it has least to spare.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        return not isinstance(error, ConnectionClosed | EOFError | ConnectionError | TimeoutError)


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


def gated_server(
    handler: Callable[[ServerConnection], Any],
    sock: socket.socket,
    gate: Gate,
    *,
    process_request: Callable[..., Any],
    subprotocols: list[str],
    max_size: int,
    ping_interval: float,
    ping_timeout: float,
    close_timeout: float,
    open_timeout: float,
) -> Server:
    """A websockets Server (as ``serve`` makes one, without compression) accepting through `gate`."""
    server = Server(handler, process_request=process_request, open_timeout=open_timeout)
    if not any(isinstance(f, QuietClientDepartures) for f in server.logger.filters):  # type: ignore[union-attr]
        server.logger.addFilter(QuietClientDepartures())  # type: ignore[union-attr]

    def make_connection() -> GatedConnection:
        protocol = ServerProtocol(subprotocols=subprotocols, max_size=max_size, logger=server.logger)  # type: ignore[arg-type]
        return GatedConnection(
            protocol, server, ping_interval=ping_interval, ping_timeout=ping_timeout, close_timeout=close_timeout
        )

    server.wrap(GatedListener(sock, make_connection, gate))  # type: ignore[arg-type]
    return server
