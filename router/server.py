"""The router process: WebSocket server, one WAMP session per connection.

``/ws`` speaks WAMP (subprotocols wamp.2.json and wamp.2.msgpack); ``/healthz``
and ``/metrics`` are answered from ``process_request`` before any upgrade, and
so is a browser from an origin not on the allow-list (403).

Rights follow changes: an invalidation published on keys.AUTHZ_INVALIDATE_CHANNEL
re-checks that user's open subscriptions at once, and every session is re-checked
every ``authz_recheck_seconds`` for changes written straight into the database. A
session that lost a topic gets GOODBYE ``handin.close.rights_changed``; its client
reconnects and is refused what it may no longer see.
An authorisation look-up slower than ``authz_timeout_seconds`` is answered with
ERROR ``handin.error.unavailable`` and logged with its topic and duration: the
client may try again, and never waits on a SUBSCRIBE nobody answers.
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
from collections import OrderedDict, defaultdict, deque
from collections.abc import AsyncIterator
from http import HTTPStatus
from typing import TypeVar
from urllib.parse import urlsplit

from prometheus_client import CONTENT_TYPE_LATEST
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy.exc import SQLAlchemyError
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from core import chat, keys
from core.access import SERVICE
from core.audience import Audience
from core.auth import Ticket
from core.db import make_engine, make_sessionmaker
from core.event_loop import event_loop_factory
from core.garbage import collect_garbage_rarely
from core.settings import Settings, get_settings
from core.unit_of_work import unit_of_work
from router import wamp
from router.auth import (
    NOT_HELD,
    PUBLISH,
    SUBSCRIBE,
    AuthenticationFailed,
    AuthorizationTimeout,
    Authorizer,
    Identity,
    TicketLedger,
    TicketUse,
    check_use,
    identify,
    read_ticket,
    ticket_ttl,
)
from router.broker import Broker, websocket_frame
from router.chat import ChatGate
from router.connection import WebSocketConnection
from router.directory import Directory, WebSessionAndRights
from router.listener import Gate, Listener, listening_socket
from router.metrics import RouterMetrics

log = logging.getLogger("router")

WS_PATH = "/ws"
# Messages held back per session while an earlier one is being acted on; past it the socket is not read.
MAX_BACKLOG = 16
# After sending a close frame, how long the peer has to close before the connection is aborted.
CLOSE_TIMEOUT_SECONDS = 2.0
UNAVAILABLE = "handin.error.unavailable"
TOO_MANY_SESSIONS = "handin.error.too_many_sessions"
TOO_MANY_SUBSCRIPTIONS = "handin.error.too_many_subscriptions"
# GOODBYE reason when a session lost the right to a topic it had subscribed. Not an UNSUBSCRIBED
# with request 0 (subscription revocation): autobahn-python announces that feature but treats the
# message as a protocol error, so every client gets the one close all of them understand.
RIGHTS_CHANGED = "handin.close.rights_changed"
# The event type a client PUBLISH is stored under in the audit trail.
CLIENT_MESSAGE_TYPE = chat.MESSAGE_TYPE
K = TypeVar("K")


class Peer:
    """One WebSocket connection and the WAMP session on it."""

    # Thousands of these live at once: no per-instance __dict__.
    __slots__ = (
        "backlog",
        "busy",
        "connection",
        "dropped",
        "gone",
        "identity",
        "pending",
        "protocol",
        "role",
        "router",
        "serializer",
    )

    def __init__(self, router: Router, connection: WebSocketConnection, serializer: wamp.Serializer) -> None:
        self.router = router
        self.connection = connection
        self.serializer = serializer
        self.protocol = wamp.BrokerSession(serializer)
        self.identity: Identity | None = None
        self.role = "student"  # the least privileged shape until authenticated
        self.dropped = False
        self.gone = asyncio.Event()
        self.pending = 0  # SUBSCRIBEs being checked, counted against the per-session cap
        # Messages wait here, in order, while an earlier one's action (a ticket check, an
        # authorisation look-up) runs.
        self.busy = False
        self.backlog: deque[str | bytes] = deque()

    def send(self, frame: str | bytes) -> None:
        # Written synchronously like events, so replies and EVENTs keep their order.
        self.router.broker.write_now(self, websocket_frame(frame))

    def drop_slow(self) -> None:
        if self.dropped:
            return
        self.dropped = True
        self.router.metrics.slow_consumers.inc()
        log.warning("dropping slow consumer", extra={"wamp_session": self.protocol.session_id})
        self.connection.abort()


class Router:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = settings.router
        self.metrics = RouterMetrics()
        # A few long-lived connections: look-ups are batched (router.directory), so a storm grows
        # batches, not connections; no overflow connections opened and closed per burst.
        pool = {} if settings.database_url.startswith("sqlite") else {"pool_size": 4, "max_overflow": 0}
        self.engine = make_engine(settings.database_url, mostly_reads=True, pool_recycle=3600, **pool)
        self.sessions = make_sessionmaker(self.engine)
        self.redis: Redis = Redis.from_url(settings.redis_url)
        self.tickets = TicketLedger(self.redis)
        self.directory = Directory(self.engine, self.limits.authz_recheck_seconds, self.limits.authz_cache_entries)
        self.authorizer = Authorizer(
            self.directory,
            self.limits.authz_cache_seconds,
            self.limits.authz_cache_entries,
            timeout_seconds=self.limits.authz_timeout_seconds,
        )
        self.allowed_origins = allowed_origins(settings)
        self.chat = ChatGate(self.redis, settings.chat)
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
        # Connections accepted and not yet welcomed: past the bound the listener stops accepting.
        self.gate = Gate(self.limits.max_handshakes_in_flight)
        self.probes: Server | None = None  # the health port's listener, when there is one
        self.metrics.watch(self.gate)

    async def start(self) -> None:
        await self.broker.start()
        try:
            await asyncio.wait_for(self.directory.warm_up(), self.limits.authz_timeout_seconds)
        except (SQLAlchemyError, OSError, TimeoutError) as error:  # sessions will connect as they come
            log.warning("database not reachable at start", extra={"error": str(error)})
        self._spawn(self._recheck_periodically())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.authorizer.close()
        await self.broker.stop()
        await self.redis.aclose()
        await self.engine.dispose()

    # HTTP before the upgrade -----------------------------------------------------

    def process_probe(self, connection: ServerConnection, request: Request) -> Response:
        """The health port: /healthz and /metrics, answered however many browsers wait on the main port."""
        path = request.path.split("?", 1)[0]
        return self._probe(connection, path) or connection.respond(
            HTTPStatus.NOT_FOUND, "this port answers /healthz and /metrics\n"
        )

    def _probe(self, connection: ServerConnection | WebSocketConnection, path: str) -> Response | None:
        if path == "/healthz":
            if self.broker.healthy and not self.shutting_down:
                return connection.respond(HTTPStatus.OK, "ok\n")
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "unavailable\n")
        if path == "/metrics":
            response = connection.respond(HTTPStatus.OK, self.metrics.render().decode())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response
        return None

    def process_request(self, connection: WebSocketConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path != WS_PATH:
            return self._probe(connection, path) or connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        # Browsers always send Origin: a page elsewhere must not open a socket with our user's
        # cookies behind its ticket request. Clients that are not browsers send none.
        origin = request.headers.get("Origin")
        if origin is not None and normal_origin(origin) not in self.allowed_origins:
            self.metrics.auth_failures.labels(reason="origin not allowed").inc()
            return connection.respond(HTTPStatus.FORBIDDEN, "origin not allowed\n")
        if self.shutting_down:
            response = connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "shutting down\n")
            response.headers["Retry-After"] = "1"
            return response
        offered = {p.strip() for h in request.headers.get_all("Sec-WebSocket-Protocol") for p in h.split(",")}
        if not offered & set(wamp.SUBPROTOCOLS):
            return connection.respond(HTTPStatus.BAD_REQUEST, "offer subprotocol wamp.2.json or wamp.2.msgpack\n")
        return None

    # One connection ----------------------------------------------------------------

    def opened(self, connection: WebSocketConnection) -> None:
        serializer = wamp.SERIALIZERS[connection.subprotocol or ""]  # process_request required one of ours
        connection.peer = peer = Peer(self, connection, serializer)
        self.peers.add(peer)

    def message(self, connection: WebSocketConnection, frame: str | bytes) -> None:
        peer: Peer = connection.peer
        if peer.busy:
            peer.backlog.append(frame)
            if len(peer.backlog) > MAX_BACKLOG and connection.transport is not None:
                connection.transport.pause_reading()  # the rest waits in the socket
            return
        self._receive(peer, frame)

    def _receive(self, peer: Peer, frame: str | bytes) -> None:
        """Act on one message at once; only an action that waits runs as a task, and holds the rest back."""
        actions = peer.protocol.receive(frame)
        for index, action in enumerate(actions):
            if isinstance(action, wamp.Send):
                peer.send(action.frame)
                continue
            if isinstance(action, wamp.SubscribeRequested) and self._subscribe_at_once(peer, action):
                continue
            peer.busy = True
            if isinstance(action, wamp.CheckTicket):
                self._check_ticket(peer, action.ticket)  # answered by a callback, which then resumes
                return
            self._spawn(self._work_through(peer, actions[index:]))
            return

    async def _work_through(self, peer: Peer, actions: list[wamp.Action]) -> None:
        try:
            while True:
                for action in actions:
                    if isinstance(action, wamp.CheckTicket):
                        self._check_ticket(peer, action.ticket)  # still busy: its answer resumes the rest
                        return
                    await self._act(peer, action)
                if not peer.backlog or peer.gone.is_set():
                    break
                actions = peer.protocol.receive(peer.backlog.popleft())
        except Exception:
            log.exception("a session's message could not be handled", extra={"wamp_session": peer.protocol.session_id})
            await peer.connection.close(1011, "internal error")
        self._ready(peer)

    def _resume(self, peer: Peer) -> None:
        """An action answered from a callback is done: act on what arrived meanwhile, or read on."""
        if peer.backlog and not peer.gone.is_set():
            self._spawn(self._work_through(peer, []))
        else:
            self._ready(peer)

    @staticmethod
    def _ready(peer: Peer) -> None:
        peer.busy = False
        if peer.connection.transport is not None and not peer.gone.is_set():
            peer.connection.transport.resume_reading()

    def expired(self, connection: WebSocketConnection) -> None:
        peer: Peer = connection.peer
        if peer.protocol.phase in (wamp.Phase.AWAIT_HELLO, wamp.Phase.CHALLENGED, wamp.Phase.AUTHENTICATING):
            self._spawn(self._run_actions(peer, peer.protocol.abort(wamp.NOT_AUTHORIZED, "handshake timed out")))

    def closed(self, connection: WebSocketConnection) -> None:
        self._spawn(self._forget(connection.peer))

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
        elif isinstance(action, wamp.SubscribeRequested):
            await self._subscribe(peer, action)
        elif isinstance(action, wamp.UnsubscribeRequested):
            await self.broker.detach(peer, action.topic)
        elif isinstance(action, wamp.PublishRequested):
            await self._publish(peer, action)

    # The ticket check: callbacks, and a task only when the web session must be loaded.

    def _check_ticket(self, peer: Peer, ticket: str) -> None:
        try:
            claims = read_ticket(ticket, self.settings.secret_key)
        except AuthenticationFailed as error:
            self._refuse(peer, error)
            return
        self.tickets.use(
            claims.ticket_id, claims.session_id, ticket_ttl(claims), lambda use: self._ticket_used(peer, claims, use)
        )

    def _ticket_used(self, peer: Peer, claims: Ticket, use: TicketUse | Exception) -> None:
        if isinstance(use, Exception):
            self._backend_failed(peer, use)
            return
        try:
            check_use(use)
            web_session = self.directory.held_web_session(claims.session_id)
            rights = self.directory.held_rights(claims.user_id)
            if web_session is None or rights is None:  # loaded with the batch of handshakes now gathering
                self.directory.load_web_session(claims.session_id, lambda found: self._loaded(peer, claims, found))
                return
            identity = identify(claims, web_session, rights)
        except AuthenticationFailed as error:
            self._refuse(peer, error)
            return
        self._welcome(peer, identity)

    def _loaded(self, peer: Peer, claims: Ticket, found: WebSessionAndRights | BaseException) -> None:
        if isinstance(found, (SQLAlchemyError, OSError)):
            self._backend_failed(peer, found)
            return
        if isinstance(found, BaseException):
            log.error("loading a web session failed", exc_info=found)
            self._abort(peer, UNAVAILABLE, "try again shortly", self.limits.busy_retry_after_seconds)
            return
        try:
            identity = identify(claims, *found)
        except AuthenticationFailed as error:
            self._refuse(peer, error)
            return
        self._welcome(peer, identity)

    def _refuse(self, peer: Peer, error: AuthenticationFailed) -> None:
        self.metrics.auth_failures.labels(reason=str(error)).inc()
        self._abort(peer, wamp.NOT_AUTHORIZED, str(error))

    def _backend_failed(self, peer: Peer, error: Exception) -> None:
        log.warning("authentication backend failed", extra={"error": str(error)})
        self._abort(peer, UNAVAILABLE, "try again shortly", self.limits.busy_retry_after_seconds)

    def _abort(self, peer: Peer, reason: str, text: str, retry_after: float | None = None) -> None:
        """End a session that was never welcomed (what it sent meanwhile is not read)."""
        self._spawn(self._run_actions(peer, peer.protocol.abort(reason, text, retry_after=retry_after)))

    def _welcome(self, peer: Peer, identity: Identity) -> None:
        if peer.protocol.phase is not wamp.Phase.AUTHENTICATING:
            return  # the handshake timed out meanwhile, and was aborted then
        if len(self.by_user.get(identity.user_id, ())) >= self.limits.max_sessions_per_user:
            self.metrics.auth_failures.labels(reason="too many sessions").inc()
            text = f"at most {self.limits.max_sessions_per_user} open sessions per user; close another tab"
            self._abort(peer, TOO_MANY_SESSIONS, text)
            return
        peer.identity, peer.role = identity, identity.role
        session_id = random.randint(1, wamp.MAX_ID)
        peer.send(peer.protocol.welcome(session_id, str(identity.user_id), identity.role).frame)
        peer.connection.admitted()  # no longer counted against the listener's bound
        self.metrics.sessions.inc()
        self.by_web_session[identity.web_session_id].add(peer)
        self.by_user[identity.user_id].add(peer)
        if identity.web_session_id in self._recently_revoked:  # logout raced the ticket check
            self._end(peer, wamp.CLOSE_LOGOUT, "logged out")
        self._resume(peer)

    def _subscribe_at_once(self, peer: Peer, request: wamp.SubscribeRequested) -> bool:
        """Answer a SUBSCRIBE without waiting, when its decision and the topic's Redis subscription
        are held (most of a storm's browsers ask for the same few topics); False: it needs a task."""
        assert peer.identity is not None
        if self._refuse_subscribe(peer, request):
            return True
        audience = self.authorizer.held_audience(peer.identity.principal, request.topic)
        if audience is NOT_HELD:
            return False
        if audience is None:
            self.metrics.denied.labels(action=SUBSCRIBE).inc()
            peer.send(peer.protocol.error(wamp.SUBSCRIBE, request.request, wamp.NOT_AUTHORIZED).frame)
            return True
        subscription = self.broker.held_subscription(request.topic)
        if subscription is None:
            return False
        self._subscribed(peer, request, subscription, audience)
        return True

    def _refuse_subscribe(self, peer: Peer, request: wamp.SubscribeRequested) -> bool:
        if keys.parse_topic(request.topic) is None:
            text = f"{request.topic} is not a handin topic name (ids are decimal, without leading zeros)"
            peer.send(peer.protocol.error(wamp.SUBSCRIBE, request.request, wamp.INVALID_URI, text).frame)
            return True
        limit = self.limits.max_subscriptions_per_session
        if len(peer.protocol.topics) + peer.pending >= limit:
            self.metrics.denied.labels(action=SUBSCRIBE).inc()
            text = f"at most {limit} subscriptions per session"
            peer.send(peer.protocol.error(wamp.SUBSCRIBE, request.request, TOO_MANY_SUBSCRIPTIONS, text).frame)
            return True
        return False

    def _subscribed(self, peer: Peer, request: wamp.SubscribeRequested, subscription: int, audience: Audience) -> None:
        # SUBSCRIBED is written before the session joins the topic: no EVENT can overtake it.
        peer.send(peer.protocol.subscribed(request.request, request.topic, subscription).frame)
        self.broker.attach(peer, request.topic, audience)

    async def _subscribe(self, peer: Peer, request: wamp.SubscribeRequested) -> None:
        assert peer.identity is not None
        if self._refuse_subscribe(peer, request):
            return
        peer.pending += 1
        try:
            await self._subscribe_allowed(peer, request)
        finally:
            peer.pending -= 1

    async def _subscribe_allowed(self, peer: Peer, request: wamp.SubscribeRequested) -> None:
        assert peer.identity is not None
        try:
            audience = await self.authorizer.audience(peer.identity.principal, request.topic)
        except (AuthorizationTimeout, SQLAlchemyError, OSError) as error:
            text = self._authorization_failed(peer, SUBSCRIBE, request.topic, error)
            peer.send(peer.protocol.error(wamp.SUBSCRIBE, request.request, UNAVAILABLE, text).frame)
            return
        if audience is None:
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
        self._subscribed(peer, request, subscription, audience)

    async def _publish(self, peer: Peer, request: wamp.PublishRequested) -> None:
        assert peer.identity is not None
        identity = peer.identity

        def refuse(uri: str, text: str = "") -> None:
            if request.acknowledge:
                peer.send(peer.protocol.error(wamp.PUBLISH, request.request, uri, text).frame)

        if keys.parse_topic(request.topic) is None:
            refuse(wamp.INVALID_URI, f"{request.topic} is not a handin topic name")
            return
        try:
            allowed = await self.authorizer.allowed(identity.principal, PUBLISH, request.topic)
        except (AuthorizationTimeout, SQLAlchemyError, OSError) as error:
            refuse(UNAVAILABLE, self._authorization_failed(peer, PUBLISH, request.topic, error))
            return
        if not allowed:
            self.metrics.denied.labels(action=PUBLISH).inc()
            refuse(wamp.NOT_AUTHORIZED)
            return
        data = {"author_id": identity.user_id, "args": request.args, "kwargs": request.kwargs}
        try:
            json.dumps(data)
        except (TypeError, ValueError):
            refuse(wamp.INVALID_ARGUMENT, "payload must be JSON-representable")
            return
        if chat.is_chat_topic(request.topic) and identity.role != SERVICE:
            try:
                async with self.sessions() as db:  # a muted student's message is refused, not counted
                    refusal = await chat.mute_refusal(db, request.topic, identity.user_id)
                refusal = refusal or await self.chat.refusal(identity.user_id, request.args, request.kwargs)
            except (RedisError, OSError, SQLAlchemyError):
                refuse(UNAVAILABLE, "not sent; try again")
                return
            if refusal is not None:
                self.metrics.chat_refused.labels(reason=refusal[0]).inc()
                refuse(*refusal)
                return
        try:
            # Published below, once the publisher's own exclusion is noted.
            async with unit_of_work(self.sessions, None) as work:
                envelope = await work.emit(
                    request.topic, CLIENT_MESSAGE_TYPE, data, actor="user", actor_id=identity.user_id
                )
        except SQLAlchemyError as error:
            log.warning("client publish not stored", extra={"error": str(error)})
            refuse(UNAVAILABLE, "not stored; try again")
            return
        if request.exclude_me:
            self.broker.exclude_once(request.topic, envelope.seq, peer)
        await work.publish(self.redis)
        self.metrics.published.inc()
        if request.acknowledge:
            publication = wamp.publication_id(request.topic, envelope.seq)
            peer.send(peer.protocol.published(request.request, publication).frame)

    def _authorization_failed(self, peer: Peer, action: str, topic: str, error: Exception) -> str:
        """Log a look-up that failed or took too long; the text for the client's ERROR."""
        user_id = peer.identity.user_id if peer.identity is not None else None
        if isinstance(error, AuthorizationTimeout):
            self.metrics.authz_timeouts.labels(action=action).inc()
            log.warning(
                "authorisation look-up timed out",
                extra={"action": action, "topic": topic, "seconds": round(error.seconds, 3), "user_id": user_id},
            )
            return "authorisation took too long; try again shortly"
        log.warning(
            "authorisation look-up failed",
            extra={"action": action, "topic": topic, "user_id": user_id, "error": str(error)},
        )
        return "authorisation unavailable; try again shortly"

    async def _forget(self, peer: Peer) -> None:
        """The connection is gone (its place in the listener's bound was given up then)."""
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
        self.directory.forget_web_session(session_id)
        self._recently_revoked[session_id] = None
        while len(self._recently_revoked) > 10_000:
            self._recently_revoked.popitem(last=False)
        for peer in list(self.by_web_session.get(session_id, ())):
            self._end(peer, wamp.CLOSE_LOGOUT, "logged out")

    def _on_authz_invalidated(self, message: str) -> None:
        user_id = int(message) if message.isdigit() else None
        self.authorizer.invalidate(user_id)
        users = list(self.by_user) if user_id is None else [user_id] if user_id in self.by_user else []
        for user in users:
            self._spawn(self._recheck_user_logged(user))

    async def _recheck_user_logged(self, user_id: int) -> None:
        try:
            await self._recheck_user(user_id)
        except (AuthorizationTimeout, SQLAlchemyError, OSError) as error:
            log.warning("authorisation re-check failed; next round retries", extra={"error": str(error)})

    async def _recheck_periodically(self) -> None:
        """Catch rights removed without an invalidation (a row deleted straight in the database):
        forget every cached answer and re-check every session, every ``authz_recheck_seconds``."""
        while True:
            await asyncio.sleep(self.limits.authz_recheck_seconds)
            self.authorizer.invalidate(None)
            try:  # every connected user's rights in a few batched statements, then decided from memory
                await asyncio.wait_for(self.directory.refresh(list(self.by_user)), self.limits.authz_timeout_seconds)
            except (TimeoutError, SQLAlchemyError, OSError) as error:
                log.warning("authorisation re-check failed; next round retries", extra={"error": str(error)})
                continue
            for user_id in list(self.by_user):
                try:
                    await self._recheck_user(user_id)
                except (AuthorizationTimeout, SQLAlchemyError, OSError) as error:
                    log.warning("authorisation re-check failed; next round retries", extra={"error": str(error)})
                    break

    async def _recheck_user(self, user_id: int) -> None:
        """Rights changed: refresh the role of the user's sessions; end those that lost a topic."""
        principal = await self.authorizer.principal(user_id)
        for peer in list(self.by_user.get(user_id, ())):
            if peer.identity is None or peer.protocol.phase is not wamp.Phase.ESTABLISHED:
                continue
            if principal is None:
                self._end(peer, wamp.NOT_AUTHORIZED, "user removed")
                continue
            peer.role = principal.role
            peer.identity = Identity(principal.user_id, principal.role, peer.identity.web_session_id)
            lost = []
            for topic in list(peer.protocol.topics):
                audience = await self.authorizer.audience(principal, topic)
                if audience is None:
                    lost.append(topic)
                else:  # e.g. a student made staff of the course: later events shaped for staff
                    self.broker.change_audience(peer, topic, audience)
            if lost:
                await self._revoke(peer, lost)

    async def _revoke(self, peer: Peer, topics: list[str]) -> None:
        # No event of these topics may go out from here on, not even while GOODBYE is answered.
        for topic in topics:
            peer.protocol.forget(topic)
            await self.broker.detach(peer, topic)
        self.metrics.revoked.inc(len(topics))
        log.info("rights withdrawn", extra={"user_id": peer.identity and peer.identity.user_id, "topics": topics})
        self._end(peer, RIGHTS_CHANGED, f"access withdrawn: {', '.join(sorted(topics))}; reconnect")

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


def normal_origin(value: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or trailing slash."""
    parts = urlsplit(value.strip().lower())
    default = {"http": 80, "https": 443, "ws": 80, "wss": 443}.get(parts.scheme)
    try:
        port = parts.port
    except ValueError:
        return value
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None and port != default else "")


def allowed_origins(settings: Settings) -> frozenset[str]:
    """The configured allow-list; empty means the public URL's own origin only."""
    return frozenset(normal_origin(o) for o in (settings.router.allowed_origins or [settings.public_url]))


@contextlib.asynccontextmanager
async def running_router(
    settings: Settings, host: str, port: int, health_port: int | None = None
) -> AsyncIterator[tuple[Router, Listener]]:
    """Start a router on (host, port); port 0 picks a free one (see listener.sock).

    With `health_port`, /healthz and /metrics are also answered there (router.probes), on a listener
    that never waits for room: during a reconnect storm the main port's arrivals queue in the kernel,
    and probes queued behind them would time out.
    """
    router = Router(settings)
    await router.start()
    limits = settings.router
    try:
        # A restart brings every browser back at once: the kernel holds those the gate is not taking
        # yet (up to net.core.somaxconn) rather than drop SYNs that then retry after 1, 3, 7 s.
        sock = listening_socket(host, port, backlog=4096)
        router.metrics.watch_listener(sock)

        def connection(connections: set[WebSocketConnection]) -> WebSocketConnection:
            return WebSocketConnection(
                router,
                router.gate,
                subprotocols=list(wamp.SUBPROTOCOLS),
                max_size=limits.max_message_bytes,
                close_timeout=CLOSE_TIMEOUT_SECONDS,
                handshake_timeout=limits.handshake_timeout_seconds,
                connections=connections,
            )

        listener = Listener(
            sock,
            router.gate,
            connection,
            ping_interval=limits.ping_interval_seconds,
            ping_timeout=limits.ping_timeout_seconds,
        )
        try:
            if health_port is not None:
                router.probes = await serve(_no_upgrade, host, health_port, process_request=router.process_probe)
            yield router, listener
            listener.stop_accepting()
            await router.drain()
        finally:
            if router.probes is not None:
                router.probes.close()
                await router.probes.wait_closed()
            await listener.close()
    finally:
        await router.stop()


async def _no_upgrade(connection: ServerConnection) -> None:
    """Never reached: the health port answers every request over HTTP before any upgrade."""
    await connection.close(1008)


async def run(host: str, port: int, settings: Settings | None = None, health_port: int | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with running_router(settings or get_settings(), host, port, health_port) as (_router, server):
        bound = [s.getsockname() for s in server.sockets]
        log.info(
            "router listening",
            extra={"addresses": [f"{a[0]}:{a[1]}" for a in bound], "path": WS_PATH, "health_port": health_port},
        )
        await stop.wait()
        log.info("router shutting down")


def main(host: str = "127.0.0.1", port: int = 8080, health_port: int | None = None) -> None:
    from core.logs import configure_logging

    configure_logging()
    settings = get_settings()
    # A session's objects are mostly freed by reference counting: with CPython's thresholds the
    # collector ran about once per session opened, 12 % of the router's CPU opening sessions and
    # 25 % in a reconnect storm (docs/performance.md).
    collect_garbage_rarely()
    with asyncio.Runner(loop_factory=event_loop_factory(settings.router.event_loop)) as runner:
        runner.run(run(host, port, settings, health_port))
