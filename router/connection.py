"""One WebSocket connection: websockets' Sans-I/O protocol on an asyncio.Protocol, with no task of its own.

websockets' asyncio server gives every connection a handler task, a keepalive task, an opening
timeout and a future per message; for a WAMP session that is opened, authenticated, subscribed and
then mostly idle, that machinery cost the router more CPU than everything else a session needs
(docs/performance.md). Here the upgrade and every frame are handled in ``data_received``: the
router is called back for the request, for each whole message and at the end, and runs a task only
for what must wait (a ticket check, an authorisation look-up). Keepalive pings are sent and checked
for all connections at once by the listener's sweep (router/listener.py).

websockets still does the protocol: HTTP parsing, the handshake's checks and answer, frame
parsing and limits, pongs, the closing handshake. This module only moves bytes and events, except
that a plain upgrade request is accepted by router.upgrade, which leaves anything else to websockets.
"""

from __future__ import annotations

import asyncio
import logging
import os
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Protocol, cast

from websockets.frames import OP_BINARY, OP_CONT, OP_PONG, OP_TEXT, CloseCode, Frame
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol

from router.upgrade import Accepted, accept_plain

if TYPE_CHECKING:
    from router.listener import Gate

log = logging.getLogger("router")
# websockets' own logger for what its protocol reports (malformed requests and frames, at DEBUG).
PROTOCOL_LOG = logging.getLogger("websockets.server")


def _worth_a_line(record: logging.LogRecord) -> bool:
    """websockets logs every answer that is not an upgrade as "connection rejected (<status>)": a
    refusal (origin, subprotocol, shutting down) is worth a line, a probe or a scrape answered
    200 (/healthz, /metrics, every few seconds per replica) is not. Nor is its "connection open"
    for each upgrade it answers: no user, no address, thousands a second when a deadline's pages
    open, and router CPU per session that shows at INFO (docs/performance.md, "Log level"); the
    sessions gauge counts them."""
    if record.msg == "connection open":
        return False
    if record.msg == "connection rejected (%d %s)" and isinstance(record.args, tuple) and record.args:
        return not (isinstance(record.args[0], int) and record.args[0] < 400)
    return True


# On the logger, not a handler: the main port's connections and the health port's server both log there.
PROTOCOL_LOG.addFilter(_worth_a_line)


class Endpoint(Protocol):
    """The router's side of a connection."""

    def process_request(self, connection: WebSocketConnection, request: Request) -> Response | None:
        """An HTTP answer instead of the upgrade, or None to upgrade."""

    def opened(self, connection: WebSocketConnection) -> None:
        """Upgraded: a WebSocket from now on."""

    def message(self, connection: WebSocketConnection, data: str | bytes) -> None:
        """One whole message, in order."""

    def expired(self, connection: WebSocketConnection) -> None:
        """Still not admitted when its handshake time ran out (called only once upgraded)."""

    def closed(self, connection: WebSocketConnection) -> None:
        """The TCP connection is gone (called only once upgraded)."""


class WebSocketConnection(asyncio.Protocol):
    """A server-side WebSocket connection, counted in its gate until admitted (WELCOME) or gone."""

    # Tens of thousands of these live at once: no per-instance __dict__.
    __slots__ = (
        "_close_timeout",
        "_closer",
        "_connections",
        "_deadline",
        "_fragmented_text",
        "_fragments",
        "_gate",
        "_gone",
        "_handshake_timeout",
        "_lost",
        "_max_size",
        "_subprotocols",
        "_upgraded",
        "endpoint",
        "peer",
        "ping",
        "pinged_at",
        "protocol",
        "transport",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        gate: Gate,
        *,
        subprotocols: list[str],
        max_size: int,
        close_timeout: float,
        handshake_timeout: float,
        connections: set[WebSocketConnection],
    ) -> None:
        self.endpoint = endpoint
        # Made by the first read: already open when the upgrade was accepted by router.upgrade.
        self.protocol: ServerProtocol | None = None
        self._subprotocols = subprotocols
        self._max_size = max_size
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None  # the router's session on this connection
        self._gate: Gate | None = gate
        self._connections = connections
        self._close_timeout = close_timeout
        self._handshake_timeout = handshake_timeout
        self._deadline: asyncio.TimerHandle | None = None
        self._closer: asyncio.TimerHandle | None = None
        self._lost: asyncio.Future[None] | None = None
        self._gone = False
        self._upgraded = False
        self._fragments: list[bytes] = []
        self._fragmented_text = False
        self.ping: bytes | None = None  # the keepalive ping awaiting its pong
        self.pinged_at = 0.0

    # What the router reads and calls.

    @property
    def subprotocol(self) -> str | None:
        return None if self.protocol is None else self.protocol.subprotocol

    @property
    def open(self) -> bool:
        return self.protocol is not None and self.protocol.state is State.OPEN and not self._gone

    def respond(self, status: HTTPStatus, text: str) -> Response:
        return self._http_protocol().reject(status, text)

    def _http_protocol(self) -> ServerProtocol:
        """websockets' protocol from the opening handshake on: it parses, checks and answers the request."""
        if self.protocol is None:
            self.protocol = ServerProtocol(
                subprotocols=self._subprotocols,  # type: ignore[arg-type]
                max_size=self._max_size,
                logger=PROTOCOL_LOG,
            )
        return self.protocol

    def admitted(self) -> None:
        """No longer counted against the gate: its session was welcomed, or it is gone."""
        if self._gate is not None:
            self._gate.leave()
            self._gate = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    async def close(self, code: int = CloseCode.NORMAL_CLOSURE, reason: str = "") -> None:
        """Start the closing handshake (or end a connection never upgraded); wait until it is gone."""
        if self.transport is None or self._gone:
            return
        if self.protocol is None:
            self.transport.close()
        elif self.protocol.state is State.OPEN:
            self.protocol.send_close(code, reason)
            self._flush()
            self._close_soon()
        elif self.protocol.state is State.CONNECTING:
            self.transport.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        if self.transport is None or self._gone:
            return
        if self._lost is None:
            self._lost = asyncio.get_running_loop().create_future()
        await asyncio.shield(self._lost)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def keepalive(self, now: float, interval: float, timeout: float) -> None:
        """Called by the listener's sweep: ping when due; close a peer whose pong is overdue."""
        if not self.open:
            return
        assert self.protocol is not None
        if self.ping is not None:
            if now - self.pinged_at >= timeout:
                self.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")
                self._flush()
                self._close_soon()
        elif now - self.pinged_at >= interval:
            self.ping = os.urandom(4)
            self.pinged_at = now
            self.protocol.send_ping(self.ping)
            self._flush()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        self._connections.add(self)
        loop = asyncio.get_running_loop()
        self.pinged_at = loop.time()
        self._deadline = loop.call_later(self._handshake_timeout, self._handshake_expired)

    def data_received(self, data: bytes) -> None:
        protocol = self.protocol
        if protocol is None:
            accepted = accept_plain(data, self._subprotocols)
            if accepted is not None:
                self._upgrade_plain(accepted)
                return
            protocol = self._http_protocol()
        protocol.receive_data(data)
        events = protocol.events_received()
        self._flush()  # what the protocol answers by itself: pongs, close frames, 400 to a bad request
        if protocol.close_expected():
            self._close_soon()
        for event in events:
            if isinstance(event, Frame):
                self._frame(event)
            elif isinstance(event, Request):
                self._upgrade(event)

    def eof_received(self) -> None:
        if self.protocol is None:
            return None  # nothing was said: let asyncio close the transport
        self.protocol.receive_eof()
        self._flush()
        # The closing handshake never needs writes after EOF: let asyncio close the transport.

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone = True
        if self.protocol is not None:
            self.protocol.receive_eof()  # idempotent; the protocol state becomes CLOSED
        self.admitted()
        self._connections.discard(self)
        if self._closer is not None:
            self._closer.cancel()
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        if self._upgraded:
            self.endpoint.closed(self)

    # The protocol's events.

    def _upgrade_plain(self, accepted: Accepted) -> None:
        """The upgrade router.upgrade accepted: open at once with its answer, unless the router answers
        over HTTP instead (a probe, a refusal)."""
        response = self._router_answer(accepted.request)
        if response is not None:
            self._answer(response)
            return
        self.protocol = ServerProtocol(
            subprotocols=self._subprotocols,  # type: ignore[arg-type]
            state=State.OPEN,
            max_size=self._max_size,
            logger=PROTOCOL_LOG,
        )
        self.protocol.subprotocol = accepted.subprotocol  # type: ignore[assignment]
        assert self.transport is not None
        self.transport.write(accepted.response)
        self._upgraded = True
        self.endpoint.opened(self)

    def _upgrade(self, request: Request) -> None:
        """An upgrade request websockets parsed: the router's answer, else websockets' (101 or a refusal)."""
        response = self._router_answer(request)
        self._answer(self._http_protocol().accept(request) if response is None else response)

    def _router_answer(self, request: Request) -> Response | None:
        try:
            return self.endpoint.process_request(self, request)
        except Exception:
            log.exception("answering an upgrade request failed")
            return self._http_protocol().reject(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")

    def _answer(self, response: Response) -> None:
        protocol = self._http_protocol()
        protocol.send_response(response)
        self._flush()
        if protocol.state is State.OPEN:
            self._upgraded = True
            self.endpoint.opened(self)
        elif self.transport is not None:
            self.transport.close()  # answered over HTTP; written before the close

    def _frame(self, frame: Frame) -> None:
        if frame.opcode is OP_PONG:
            if frame.data == self.ping:
                self.ping = None
            return
        if frame.opcode is OP_TEXT or frame.opcode is OP_BINARY:
            if not frame.fin:
                self._fragments = [bytes(frame.data)]
                self._fragmented_text = frame.opcode is OP_TEXT
                return
            self._deliver(bytes(frame.data), frame.opcode is OP_TEXT)
        elif frame.opcode is OP_CONT:  # the protocol checks continuation order and total size
            self._fragments.append(bytes(frame.data))
            if frame.fin:
                data, self._fragments = b"".join(self._fragments), []
                self._deliver(data, self._fragmented_text)

    def _deliver(self, data: bytes, text: bool) -> None:
        if not self.open:
            return
        if text:
            try:
                message: str | bytes = data.decode()
            except UnicodeDecodeError:
                assert self.protocol is not None  # open
                self.protocol.fail(CloseCode.INVALID_DATA, "invalid UTF-8 in a text message")
                self._flush()
                self._close_soon()
                return
        else:
            message = data
        self.endpoint.message(self, message)

    # Moving bytes.

    def _flush(self) -> None:
        transport = self.transport
        if transport is None or self.protocol is None:
            return
        for data in self.protocol.data_to_send():
            if data:
                transport.write(data)
            elif transport.can_write_eof():  # the protocol's end of stream: half-close
                try:
                    transport.write_eof()
                except (OSError, RuntimeError):
                    pass
            else:
                transport.close()

    def _close_soon(self) -> None:
        """The peer should close now; if it has not after close_timeout, the connection is aborted."""
        if self._closer is None and self.transport is not None:
            self._closer = asyncio.get_running_loop().call_later(self._close_timeout, self.transport.abort)

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self._upgraded:
            self.endpoint.expired(self)
        elif self.transport is not None:
            self.transport.abort()  # never finished its HTTP upgrade
