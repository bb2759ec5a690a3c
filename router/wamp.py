"""WAMP v2 Basic Profile, broker role, without I/O.

This module parses and builds WAMP messages and runs one session's state
machine. It never touches a socket: the server feeds it frames with
:meth:`BrokerSession.receive` and acts on what comes back (frames to send,
requests that need the database or Redis, a transport to close). That keeps
every protocol decision unit-testable and fuzzable on its own.

A frame that cannot be decoded, a message of the wrong shape, a message
the router must never receive, or a message in the wrong session phase is
answered with ABORT ``wamp.error.protocol_violation`` and the transport is
closed. Nothing a peer sends may raise out of :meth:`BrokerSession.receive`.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

import msgpack

# Message codes (WAMP v2 basic profile).
HELLO, WELCOME, ABORT, CHALLENGE, AUTHENTICATE, GOODBYE, ERROR = 1, 2, 3, 4, 5, 6, 8
PUBLISH, PUBLISHED = 16, 17
SUBSCRIBE, SUBSCRIBED, UNSUBSCRIBE, UNSUBSCRIBED, EVENT = 32, 33, 34, 35, 36
# Dealer-role messages: legal WAMP, but this router has no dealer role.
DEALER_MESSAGES = frozenset({48, 49, 50, 64, 65, 66, 67, 68, 69, 70})
# Messages only a router sends; a client sending them breaks the protocol.
ROUTER_ONLY = frozenset({WELCOME, CHALLENGE, PUBLISHED, SUBSCRIBED, UNSUBSCRIBED, EVENT})

REALM = "handin"
AUTHMETHOD = "ticket"
MAX_ID = 2**53

# Error and close reasons.
PROTOCOL_VIOLATION = "wamp.error.protocol_violation"
NOT_AUTHORIZED = "wamp.error.not_authorized"
NO_SUCH_REALM = "wamp.error.no_such_realm"
NO_AUTH_METHOD = "wamp.error.no_auth_method"
AUTHENTICATION_FAILED = "wamp.error.authentication_failed"
INVALID_URI = "wamp.error.invalid_uri"
INVALID_ARGUMENT = "wamp.error.invalid_argument"
NO_SUCH_SUBSCRIPTION = "wamp.error.no_such_subscription"
CLOSE_NORMAL = "wamp.close.normal"
GOODBYE_AND_OUT = "wamp.close.goodbye_and_out"
SYSTEM_SHUTDOWN = "wamp.close.system_shutdown"
CLOSE_LOGOUT = "wamp.close.logout"

# Strict URIs: lower-case letters, digits and underscore, dot-separated, no empty parts.
STRICT_URI = re.compile(r"^([0-9a-z_]+\.)*([0-9a-z_]+)$")
MAX_URI_LENGTH = 255

# What this broker actually does; advertised in WELCOME.
BROKER_FEATURES: dict[str, bool] = {"publisher_exclusion": True}


def is_valid_uri(uri: object) -> bool:
    return isinstance(uri, str) and len(uri) <= MAX_URI_LENGTH and STRICT_URI.match(uri) is not None


def is_valid_id(value: object) -> bool:
    # bool is an int in Python; a JSON `true` is not an id.
    return type(value) is int and 1 <= value <= MAX_ID


def publication_id(topic: str, seq: int) -> int:
    """The same id for the same event on every router replica: derived from (topic, seq)."""
    digest = hashlib.blake2b(f"{topic}:{seq}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % MAX_ID + 1


class ProtocolViolation(Exception):
    """A peer broke the protocol; the session is aborted with this message."""


# Serializers ------------------------------------------------------------------


class Serializer(Protocol):
    name: str
    binary: bool

    def encode(self, message: list[Any]) -> str | bytes: ...

    def decode(self, frame: str | bytes) -> Any: ...


class JsonSerializer:
    name = "wamp.2.json"
    binary = False

    def encode(self, message: list[Any]) -> str:
        return json.dumps(message, separators=(",", ":"), ensure_ascii=False)

    def decode(self, frame: str | bytes) -> Any:
        if not isinstance(frame, str):
            raise ProtocolViolation("wamp.2.json takes text frames")
        try:
            return json.loads(frame)
        except (ValueError, RecursionError) as error:
            raise ProtocolViolation(f"invalid JSON: {error}") from None


class MsgpackSerializer:
    name = "wamp.2.msgpack"
    binary = True

    def encode(self, message: list[Any]) -> bytes:
        return msgpack.packb(message, use_bin_type=True)  # type: ignore[no-any-return]

    def decode(self, frame: str | bytes) -> Any:
        if not isinstance(frame, bytes | bytearray | memoryview):
            raise ProtocolViolation("wamp.2.msgpack takes binary frames")
        try:
            return msgpack.unpackb(frame, raw=False, strict_map_key=True)
        except Exception as error:  # msgpack raises many kinds on hostile input
            raise ProtocolViolation(f"invalid msgpack: {type(error).__name__}") from None


SERIALIZERS: dict[str, Serializer] = {s.name: s for s in (JsonSerializer(), MsgpackSerializer())}
SUBPROTOCOLS = tuple(SERIALIZERS)


# Parsed client messages ---------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    realm: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Authenticate:
    signature: str
    extra: dict[str, Any]


@dataclass(frozen=True)
class Goodbye:
    details: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Abort:
    details: dict[str, Any]
    reason: str


@dataclass(frozen=True)
class Subscribe:
    request: int
    options: dict[str, Any]
    topic: str


@dataclass(frozen=True)
class Unsubscribe:
    request: int
    subscription: int


@dataclass(frozen=True)
class Publish:
    request: int
    options: dict[str, Any]
    topic: str
    args: list[Any]
    kwargs: dict[str, Any]


Message = Hello | Authenticate | Goodbye | Abort | Subscribe | Unsubscribe | Publish


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolViolation(what)


def parse(raw: Any) -> Message:
    """Check a decoded frame's shape and types; raise ProtocolViolation if it is not a client message."""
    _expect(isinstance(raw, list) and len(raw) >= 1, "a message is a non-empty array")
    code = raw[0]
    _expect(type(code) is int, "message type must be an integer")
    _expect(code not in ROUTER_ONLY, f"message type {code} is sent by routers only")
    _expect(code not in DEALER_MESSAGES, "this router has no dealer role")
    n = len(raw)
    if code == HELLO:
        _expect(n == 3 and is_valid_uri(raw[1]) and isinstance(raw[2], dict), "HELLO is [1, realm, details]")
        return Hello(raw[1], raw[2])
    if code == AUTHENTICATE:
        _expect(n == 3 and isinstance(raw[1], str) and isinstance(raw[2], dict), "AUTHENTICATE is [5, str, dict]")
        return Authenticate(raw[1], raw[2])
    if code in (GOODBYE, ABORT):
        _expect(n == 3 and isinstance(raw[1], dict) and is_valid_uri(raw[2]), "GOODBYE/ABORT is [code, dict, uri]")
        return (Goodbye if code == GOODBYE else Abort)(raw[1], raw[2])
    if code == SUBSCRIBE:
        _expect(n == 4 and is_valid_id(raw[1]) and isinstance(raw[2], dict), "SUBSCRIBE is [32, id, dict, uri]")
        _expect(isinstance(raw[3], str), "SUBSCRIBE topic must be a string")
        return Subscribe(raw[1], raw[2], raw[3])
    if code == UNSUBSCRIBE:
        _expect(n == 3 and is_valid_id(raw[1]) and is_valid_id(raw[2]), "UNSUBSCRIBE is [34, id, id]")
        return Unsubscribe(raw[1], raw[2])
    if code == PUBLISH:
        _expect(4 <= n <= 6 and is_valid_id(raw[1]) and isinstance(raw[2], dict), "PUBLISH is [16, id, dict, uri, ...]")
        _expect(isinstance(raw[3], str), "PUBLISH topic must be a string")
        args = raw[4] if n >= 5 else []
        kwargs = raw[5] if n == 6 else {}
        _expect(isinstance(args, list) and isinstance(kwargs, dict), "PUBLISH args must be a list, kwargs a dict")
        _expect(all(isinstance(key, str) for key in kwargs), "PUBLISH kwargs keys must be strings")
        return Publish(raw[1], raw[2], raw[3], args, kwargs)
    raise ProtocolViolation(f"unknown message type {code}")


# Actions: what the I/O layer must do after a frame ------------------------------


@dataclass(frozen=True)
class Send:
    frame: str | bytes


@dataclass(frozen=True)
class CloseTransport:
    reason: str


@dataclass(frozen=True)
class CheckTicket:
    """Verify this ticket, then call ``welcome()`` or ``abort()``."""

    ticket: str


@dataclass(frozen=True)
class SubscribeRequested:
    """Authorise, then call ``subscribed()`` or ``error()``."""

    request: int
    topic: str


@dataclass(frozen=True)
class UnsubscribeRequested:
    """UNSUBSCRIBED is already sent; release the topic."""

    topic: str


@dataclass(frozen=True)
class PublishRequested:
    """Authorise and store; then ``published()`` or ``error()`` if ``acknowledge``."""

    request: int
    topic: str
    args: list[Any]
    kwargs: dict[str, Any]
    acknowledge: bool
    exclude_me: bool


Action = Send | CloseTransport | CheckTicket | SubscribeRequested | UnsubscribeRequested | PublishRequested


class Phase(enum.Enum):
    AWAIT_HELLO = "await_hello"
    CHALLENGED = "challenged"  # sent CHALLENGE, waiting for AUTHENTICATE
    AUTHENTICATING = "authenticating"  # AUTHENTICATE received, ticket being checked
    ESTABLISHED = "established"
    CLOSING = "closing"  # router sent GOODBYE, waiting for the reply
    CLOSED = "closed"


@dataclass(slots=True)
class BrokerSession:
    """One WAMP session's protocol state on the router side."""

    serializer: Serializer
    realm: str = REALM
    phase: Phase = Phase.AWAIT_HELLO
    session_id: int | None = None
    # subscription id -> topic, and topic -> subscription id, for this session.
    subscriptions: dict[int, str] = field(default_factory=dict)
    topics: dict[str, int] = field(default_factory=dict)

    # Incoming -----------------------------------------------------------------

    def receive(self, frame: str | bytes) -> list[Action]:
        """Handle one frame from the peer; never raises."""
        if self.phase is Phase.CLOSED:
            return []
        try:
            message = parse(self.serializer.decode(frame))
            return self._handle(message)
        except ProtocolViolation as error:
            return self.abort(PROTOCOL_VIOLATION, str(error))
        except Exception as error:  # a defined answer even for a bug here, never a crash
            return self.abort(PROTOCOL_VIOLATION, f"unprocessable message: {type(error).__name__}")

    def _handle(self, message: Message) -> list[Action]:
        if isinstance(message, Abort):
            self.phase = Phase.CLOSED
            return [CloseTransport("peer aborted")]
        if self.phase is Phase.CLOSING:
            # After our GOODBYE only the peer's GOODBYE matters; the rest is ignored (spec).
            if isinstance(message, Goodbye):
                self.phase = Phase.CLOSED
                return [CloseTransport("goodbye")]
            return []
        if self.phase is Phase.AWAIT_HELLO:
            if not isinstance(message, Hello):
                raise ProtocolViolation("expected HELLO")
            return self._hello(message)
        if self.phase is Phase.CHALLENGED:
            if not isinstance(message, Authenticate):
                raise ProtocolViolation("expected AUTHENTICATE")
            self.phase = Phase.AUTHENTICATING
            return [CheckTicket(message.signature)]
        if self.phase is Phase.AUTHENTICATING:
            raise ProtocolViolation("message before WELCOME")
        # Established.
        if isinstance(message, Hello | Authenticate):
            raise ProtocolViolation("session already established")
        if isinstance(message, Goodbye):
            self.phase = Phase.CLOSED
            return [Send(self._encode([GOODBYE, {}, GOODBYE_AND_OUT])), CloseTransport("goodbye")]
        if isinstance(message, Subscribe):
            return self._subscribe(message)
        if isinstance(message, Unsubscribe):
            return self._unsubscribe(message)
        assert isinstance(message, Publish)
        return self._publish(message)

    def _hello(self, hello: Hello) -> list[Action]:
        roles = hello.details.get("roles")
        if not isinstance(roles, dict) or not roles:
            raise ProtocolViolation("HELLO.Details.roles must announce the client's roles")
        if hello.realm != self.realm:
            return self.abort(NO_SUCH_REALM, f"no realm {hello.realm!r}; use {self.realm!r}")
        methods = hello.details.get("authmethods", [])
        if not isinstance(methods, list) or AUTHMETHOD not in methods:
            return self.abort(NO_AUTH_METHOD, "authenticate with authmethod 'ticket' (GET /api/ws-ticket)")
        self.phase = Phase.CHALLENGED
        return [Send(self._encode([CHALLENGE, AUTHMETHOD, {}]))]

    def _subscribe(self, message: Subscribe) -> list[Action]:
        match = message.options.get("match", "exact")
        if match != "exact":
            return [self.error(SUBSCRIBE, message.request, INVALID_ARGUMENT, "only exact topic matching")]
        if not is_valid_uri(message.topic):
            return [self.error(SUBSCRIBE, message.request, INVALID_URI, "topic is not a strict URI")]
        existing = self.topics.get(message.topic)
        if existing is not None:
            # Subscribing twice to one topic returns the same subscription (spec).
            return [Send(self._encode([SUBSCRIBED, message.request, existing]))]
        return [SubscribeRequested(message.request, message.topic)]

    def _unsubscribe(self, message: Unsubscribe) -> list[Action]:
        topic = self.subscriptions.pop(message.subscription, None)
        if topic is None:
            return [self.error(UNSUBSCRIBE, message.request, NO_SUCH_SUBSCRIPTION)]
        del self.topics[topic]
        return [Send(self._encode([UNSUBSCRIBED, message.request])), UnsubscribeRequested(topic)]

    def _publish(self, message: Publish) -> list[Action]:
        acknowledge = message.options.get("acknowledge", False) is True
        if not is_valid_uri(message.topic):
            refusal = self.error(PUBLISH, message.request, INVALID_URI, "topic is not a strict URI")
            return [refusal] if acknowledge else []
        exclude_me = message.options.get("exclude_me", True) is not False
        return [PublishRequested(message.request, message.topic, message.args, message.kwargs, acknowledge, exclude_me)]

    # Outgoing (called by the I/O layer) ---------------------------------------------

    def welcome(self, session_id: int, authid: str, authrole: str) -> Send:
        if self.phase is not Phase.AUTHENTICATING:
            raise RuntimeError(f"welcome() in phase {self.phase}")
        self.phase = Phase.ESTABLISHED
        self.session_id = session_id
        details = {
            "realm": self.realm,
            "authid": authid,
            "authrole": authrole,
            "authmethod": AUTHMETHOD,
            "authprovider": "handin",
            "roles": {"broker": {"features": dict(BROKER_FEATURES)}},
        }
        return Send(self._encode([WELCOME, session_id, details]))

    def abort(self, reason: str, text: str = "", retry_after: float | None = None) -> list[Action]:
        """ABORT and close; only meaningful before the peer is gone. ``retry_after``: seconds the
        client should wait before trying again (details.retry_after; handin's browser client honours it)."""
        if self.phase is Phase.CLOSED:
            return []
        self.phase = Phase.CLOSED
        details: dict[str, Any] = {"message": text} if text else {}
        if retry_after is not None:
            details["retry_after"] = retry_after
        return [Send(self._encode([ABORT, details, reason])), CloseTransport(reason)]

    def goodbye(self, reason: str, text: str = "") -> list[Action]:
        """Router-initiated close: GOODBYE now, CLOSED when the peer answers."""
        if self.phase is not Phase.ESTABLISHED:
            return self.abort(reason, text)
        self.phase = Phase.CLOSING
        details = {"message": text} if text else {}
        return [Send(self._encode([GOODBYE, details, reason]))]

    def subscribed(self, request: int, topic: str, subscription: int) -> Send:
        self.subscriptions[subscription] = topic
        self.topics[topic] = subscription
        return Send(self._encode([SUBSCRIBED, request, subscription]))

    def forget(self, topic: str) -> int | None:
        """Stop delivering a topic without a message (e.g. rights withdrawn)."""
        subscription = self.topics.pop(topic, None)
        if subscription is not None:
            self.subscriptions.pop(subscription, None)
        return subscription

    def published(self, request: int, publication: int) -> Send:
        return Send(self._encode([PUBLISHED, request, publication]))

    def error(self, request_type: int, request: int, uri: str, text: str = "") -> Send:
        args = [text] if text else []
        return Send(self._encode([ERROR, request_type, request, {}, uri, args]))

    def _encode(self, message: list[Any]) -> str | bytes:
        return self.serializer.encode(message)


def encode_event(serializer: Serializer, subscription: int, publication: int, envelope: dict[str, Any]) -> str | bytes:
    """EVENT with the envelope as the only positional argument, so clients see `seq`."""
    return serializer.encode([EVENT, subscription, publication, {}, [envelope], {}])


GAP_EVENT_TYPE = "router.gap"


def encode_gap(serializer: Serializer, subscription: int, publication: int, topic: str) -> str | bytes:
    """EVENT saying "events of this topic may have been missed" (the router lost Redis a moment):
    details.gap is true and the only argument is an envelope without ``seq``, which seq-keyed clients
    ignore; handin's browser client fetches what it missed (after=seq) at once."""
    envelope = {"topic": topic, "type": GAP_EVENT_TYPE, "data": {}}
    return serializer.encode([EVENT, subscription, publication, {"gap": True}, [envelope], {}])


def encode_json_event(subscription: int, publication: int, envelope_json: str) -> str:
    """EVENT for wamp.2.json built around an already-serialised envelope: no re-encoding per event."""
    return f"[{EVENT},{subscription},{publication},{{}},[{envelope_json}],{{}}]"
