"""The router process: WebSocket server, one WAMP session per connection.

``/ws`` speaks WAMP (subprotocols wamp.2.json and wamp.2.msgpack); ``/healthz``
and ``/metrics`` are answered from ``process_request`` before any upgrade.
SIGTERM sends every session GOODBYE ``wamp.close.system_shutdown`` so clients
reconnect to another replica, waits a short grace period, then exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import signal
from collections import OrderedDict, defaultdict
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from core import keys
from core.db import make_engine, make_sessionmaker, transaction
from core.events import EventBatch
from core.settings import Settings, get_settings
from router import wamp
from router.auth import PUBLISH, SUBSCRIBE, AuthenticationFailed, Authorizer, Identity, authenticate_ticket
from router.broker import Broker, websocket_frame
from router.metrics import RouterMetrics

log = logging.getLogger("router")

WS_PATH = "/ws"
UNAVAILABLE = "handin.error.unavailable"
# The event type a client PUBLISH is stored under in the audit trail.
CLIENT_MESSAGE_TYPE = "message"
K = TypeVar("K")


class Peer:
    """One WebSocket connection and the WAMP session on it."""

    # Thousands of these live at once: no per-instance __dict__.
    __slots__ = ("connection", "dropped", "gone", "identity", "protocol", "role", "router", "serializer")

    def __init__(self, router: Router, connection: ServerConnection, serializer: wamp.Serializer) -> None:
        self.router = router
        self.connection = connection
        self.serializer = serializer
        self.protocol = wamp.BrokerSession(serializer)
        self.identity: Identity | None = None
        self.role = "student"  # the least privileged shape until authenticated
        self.dropped = False
        self.gone = asyncio.Event()

    def send(self, frame: str | bytes) -> None:
        # Written synchronously like events, so replies and EVENTs keep their order.
        self.router.broker.write_now(self, websocket_frame(frame))

    def drop_slow(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        self.router.metrics.slow_consumers.inc()
        log.warning("dropping slow consumer", extra={"wamp_session": self.protocol.session_id})
        if self.connection.transport is not None:
            self.connection.transport.abort()


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = settings.router
        self.metrics = RouterMetrics()
        self.engine = make_engine(settings.database_url, mostly_reads=True)
        self.sessions = make_sessionmaker(self.engine)
        self.redis: Redis = Redis.from_url(settings.redis_url)
        self.authorizer = Authorizer(self.sessions, self.limits.authz_cache_seconds)
        self.broker = Broker(
            settings.redis_url,
            self.metrics,
            send_buffer_limit=self.limits.send_buffer_limit_bytes,
            control={
                keys.WEB_SESSION_REVOKED_CHANNEL: self._on_web_session_revoked,
                keys.AUTHZ_INVALIDATE_CHANNEL: self._on_authz_invalidated,
            },
        )
        self.peers: set[Peer] = set()
        self.by_web_session: dict[str, set[Peer]] = defaultdict(set)
        self.by_user: dict[int, set[Peer]] = defaultdict(set)
        self._recently_revoked: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self.shutting_down = False

    async def start(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.broker.stop()
        await self.redis.aclose()
        await self.engine.dispose()

    # HTTP before the upgrade -----------------------------------------------------

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/healthz":
            if self.broker.healthy and not self.shutting_down:
                return connection.respond(HTTPStatus.OK, "ok\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable\n")
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self.metrics.render().decode())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        if path != WS_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.shutting_down:
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
        offered = {p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")}
        if not offered & set(wamp.SUBPROTOCOLS):
            return connection.respond(HTTPStatus.BAD_REQUEST, "offer subprotocol wamp.2.json or wamp.2.msgpack\n")
        return None

    # One connection ----------------------------------------------------------------

    async def handler(self, connection: ServerConnection) -> None:
        serializer = wamp.SERIALIZERS.get(connection.subprotocol or "")
        if serializer is None:
            await connection.close(1002, "offer subprotocol wamp.2.json or wamp.2.msgpack")
            return
        peer = Peer(self, connection, serializer)
        self.peers.add(peer)
        deadline = asyncio.get_running_loop().call_later(
            self.limits.handshake_timeout_seconds, self._handshake_expired, peer
        )
        try:
            async for frame in connection:
                for action in peer.protocol.receive(frame):
                    await self._act(peer, action)
                if peer.protocol.phase is wamp.Phase.CLOSED:
                    break
        except ConnectionClosed:
            pass
        finally:
            deadline.cancel()
            await self._forget(peer)

    def _handshake_expired(self, peer: Peer) -> None:
        if peer.protocol.phase in (wamp.Phase.AWAIT_HELLO, wamp.Phase.CHALLENGED, wamp.Phase.AUTHENTICATING):
            self._spawn(self._run_actions(peer, peer.protocol.abort(wamp.NOT_AUTHORIZED, "handshake timed out")))

    async def _run_actions(self, peer: Peer, actions: list[wamp.Action]) -> None:
        for action in actions:
            await self._act(peer, action)

    async def _act(self, peer: Peer, action: wamp.Action) -> None:
        if isinstance(action, wamp.Send):
            peer.send(action.frame)
        elif isinstance(action, wamp.CloseTransport):
            if action.reason == wamp.PROTOCOL_VIOLATION:
                self.metrics.protocol_errors.inc()
            await peer.connection.close(1000)
        elif isinstance(action, wamp.CheckTicket):
            await self._authenticate(peer, action.ticket)
        elif isinstance(action, wamp.SubscribeRequested):
            await self._subscribe(peer, action)
        elif isinstance(action, wamp.UnsubscribeRequested):
            await self.broker.detach(peer, action.topic)
        elif isinstance(action, wamp.PublishRequested):
            await self._publish(peer, action)

    async def _authenticate(self, peer: Peer, ticket: str) -> None:
        try:
            identity = await authenticate_ticket(
                ticket, secret=self.settings.secret_key, redis=self.redis, sessions=self.sessions
            )
        except AuthenticationFailed as error:
            self.metrics.auth_failures.labels(reason=str(error)).inc()
            await self._run_actions(peer, peer.protocol.abort(wamp.NOT_AUTHORIZED, str(error)))
            return
        except (RedisError, SQLAlchemyError, OSError) as error:
            log.warning("authentication backend failed", extra={"error": str(error)})
            await self._run_actions(peer, peer.protocol.abort(UNAVAILABLE, "try again shortly"))
            return
        if peer.protocol.phase is not wamp.Phase.AUTHENTICATING:
            return  # the handshake timed out meanwhile
        peer.identity, peer.role = identity, identity.role
        session_id = random.randint(1, wamp.MAX_ID)
        peer.send(peer.protocol.welcome(session_id, str(identity.user_id), identity.role).frame)
        self.metrics.sessions.inc()
        self.by_web_session[identity.web_session_id].add(peer)
        self.by_user[identity.user_id].add(peer)
        if identity.web_session_id in self._recently_revoked:  # logout raced the ticket check
            self._end(peer, wamp.CLOSE_LOGOUT, "logged out")

    async def _subscribe(self, peer: Peer, request: wamp.SubscribeRequested) -> None:
        assert peer.identity is not None
        if not await self.authorizer.allowed(peer.identity.principal, SUBSCRIBE, request.topic):
            self.metrics.denied.labels(action=SUBSCRIBE).inc()
            peer.send(peer.protocol.error(wamp.SUBSCRIBE, request.request, wamp.NOT_AUTHORIZED).frame)
            return
        try:
            subscription = await self.broker.subscribe(request.topic)
        except (RedisError, OSError, TimeoutError):
            peer.send(peer.protocol.error(wamp.SUBSCRIBE, request.request, UNAVAILABLE).frame)
            return
        if peer.protocol.phase is not wamp.Phase.ESTABLISHED or peer.connection.transport is None:
            await self.broker.release(request.topic)
            return
        # SUBSCRIBED is written before the session joins the topic: no EVENT can overtake it.
        peer.send(peer.protocol.subscribed(request.request, request.topic, subscription).frame)
        self.broker.attach(peer, request.topic)

    async def _publish(self, peer: Peer, request: wamp.PublishRequested) -> None:
        assert peer.identity is not None
        identity = peer.identity

        def refuse(uri: str, text: str = "") -> None:
            if request.acknowledge:
                peer.send(peer.protocol.error(wamp.PUBLISH, request.request, uri, text).frame)

        if not await self.authorizer.allowed(identity.principal, PUBLISH, request.topic):
            self.metrics.denied.labels(action=PUBLISH).inc()
            refuse(wamp.NOT_AUTHORIZED)
            return
        data = {"author_id": identity.user_id, "args": request.args, "kwargs": request.kwargs}
        try:
            json.dumps(data)
        except (TypeError, ValueError):
            refuse(wamp.INVALID_ARGUMENT, "payload must be JSON-representable")
            return
        try:
            async with transaction(self.sessions) as db:
                batch = EventBatch(db)
                envelope = await batch.emit(
                    request.topic, CLIENT_MESSAGE_TYPE, data, actor="user", actor_id=identity.user_id
                )
        except SQLAlchemyError as error:
            log.warning("client publish not stored", extra={"error": str(error)})
            refuse(UNAVAILABLE, "not stored; try again")
            return
        if request.exclude_me:
            self.broker.exclude_once(request.topic, envelope.seq, peer)
        await batch.publish(self.redis)
        self.metrics.published.inc()
        if request.acknowledge:
            publication = wamp.publication_id(request.topic, envelope.seq)
            peer.send(peer.protocol.published(request.request, publication).frame)

    async def _forget(self, peer: Peer) -> None:
        self.peers.discard(peer)
        peer.gone.set()
        if peer.identity is not None:
            self.metrics.sessions.dec()
            self._discard(self.by_web_session, peer.identity.web_session_id, peer)
            self._discard(self.by_user, peer.identity.user_id, peer)
        for topic in list(peer.protocol.topics):
            await self.broker.detach(peer, topic)
        with contextlib.suppress(Exception):
            await peer.connection.close(1000)

    @staticmethod
    def _discard(index: dict[K, set[Peer]], key: K, peer: Peer) -> None:
        peers = index.get(key)
        if peers is not None:
            peers.discard(peer)
            if not peers:
                del index[key]

    # Control messages from Redis -------------------------------------------------

    def _on_web_session_revoked(self, session_id: str) -> None:
        self._recently_revoked[session_id] = None
        while len(self._recently_revoked) > 10_000:
            self._recently_revoked.popitem(last=False)
        for peer in list(self.by_web_session.get(session_id, ())):
            self._end(peer, wamp.CLOSE_LOGOUT, "logged out")

    def _on_authz_invalidated(self, message: str) -> None:
        user_id = int(message) if message.isdigit() else None
        self.authorizer.invalidate(user_id)
        peers = self.peers if user_id is None else set(self.by_user.get(user_id, ()))
        for peer in list(peers):
            if peer.identity is not None:
                self._spawn(self._recheck(peer))

    async def _recheck(self, peer: Peer) -> None:
        """Rights changed: refresh the role and stop topics the user may no longer see."""
        assert peer.identity is not None
        principal = await self.authorizer.principal(peer.identity.user_id)
        if principal is None:
            self._end(peer, wamp.NOT_AUTHORIZED, "user removed")
            return
        peer.role = principal.role
        peer.identity = Identity(principal.user_id, principal.role, peer.identity.web_session_id)
        for topic in list(peer.protocol.topics):
            if not await self.authorizer.allowed(principal, SUBSCRIBE, topic):
                peer.protocol.forget(topic)
                await self.broker.detach(peer, topic)

    # Ending sessions ------------------------------------------------------------------

    def _end(self, peer: Peer, reason: str, text: str) -> None:
        self._spawn(self._goodbye(peer, reason, text))

    async def _goodbye(self, peer: Peer, reason: str, text: str) -> None:
        for action in peer.protocol.goodbye(reason, text):
            if isinstance(action, wamp.Send):
                peer.send(action.frame)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(peer.gone.wait(), 2.0)  # the client answers GOODBYE, then we close
        with contextlib.suppress(Exception):
            await peer.connection.close(1001 if reason == wamp.SYSTEM_SHUTDOWN else 1000)

    def _spawn(self, coroutine: object) -> None:
        task = asyncio.ensure_future(coroutine)  # type: ignore[call-overload]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self) -> None:
        """Graceful shutdown: GOODBYE everyone, wait for them to leave (bounded), then stop."""
        self.shutting_down = True
        for peer in list(self.peers):
            self._end(peer, wamp.SYSTEM_SHUTDOWN, "router shutting down")
        gone = [asyncio.ensure_future(peer.gone.wait()) for peer in list(self.peers)]
        if gone:
            _done, pending = await asyncio.wait(gone, timeout=self.limits.shutdown_grace_seconds)
            for waiter in pending:
                waiter.cancel()


@contextlib.asynccontextmanager
async def running_router(settings: Settings, host: str, port: int) -> AsyncIterator[tuple[Router, Server]]:
    """Start a router on (host, port); port 0 picks a free one (see server.sockets)."""
    router = Router(settings)
    await router.start()
    limits = settings.router
    try:
        async with serve(
            router.handler,
            host,
            port,
            subprotocols=list(wamp.SUBPROTOCOLS),  # type: ignore[arg-type]
            process_request=router.process_request,
            max_size=limits.max_message_bytes,
            ping_interval=limits.ping_interval_seconds,
            ping_timeout=limits.ping_timeout_seconds,
            close_timeout=2,
            # permessage-deflate would compress every EVENT once per connection: fan-out cost
            # grows with subscribers, and a backlog would hide behind compression. Events are small.
            compression=None,
        ) as server:
            yield router, server
            await router.drain()
    finally:
        await router.stop()


async def run(host: str, port: int, settings: Settings | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_router(settings or get_settings(), host, port) as (_router, server):
        bound = [s.getsockname() for s in server.sockets]
        log.info("router listening", extra={"addresses": [f"{a[0]}:{a[1]}" for a in bound], "path": WS_PATH})
        await stop.wait()
        log.info("router shutting down")


def main(host: str = "127.0.0.1", port: int = 8080) -> None:
    from core.logs import configure_logging

    configure_logging()
    asyncio.run(run(host, port))
