"""Redis bridge and fan-out.

A router replica subscribes in Redis only to the topics its local sessions
want, reference-counted: the first local subscriber subscribes the channel,
the last one to leave unsubscribes it. Every event read from Redis is parsed
once, projected once per audience (core.audience: owner, member or staff,
decided per subscriber and topic when it subscribed), encoded once per
(serializer, audience) and written to every recipient without waiting on any
of them; a recipient whose unsent backlog passes the bound is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import secrets
from collections import OrderedDict, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError
from websockets.frames import OP_BINARY, OP_TEXT

from core import keys
from core.audience import Audience, project_event
from router.connection import WebSocketConnection
from router.metrics import RouterMetrics
from router.wamp import MAX_ID, JsonSerializer, Serializer, encode_event, encode_gap, encode_json_event, publication_id

FIN_TEXT, FIN_BINARY = 0x80 | OP_TEXT, 0x80 | OP_BINARY

log = logging.getLogger(__name__)


class Subscriber(Protocol):
    """What the broker needs from a local session."""

    serializer: Serializer
    connection: WebSocketConnection

    def drop_slow(self) -> None: ...


@dataclass(eq=False)
class TopicState:
    subscription_id: int
    ready: asyncio.Future[None]
    subscribers: set[Subscriber] = field(default_factory=set)
    audiences: dict[Subscriber, Audience] = field(default_factory=dict)  # what each subscriber sees here
    pending: int = 0  # subscribers waiting for Redis to confirm


SUBSCRIBE_CONFIRM_SECONDS = 5.0
ControlHandler = Callable[[str], None]


class Broker:
    def __init__(
        self,
        redis_url: str,
        metrics: RouterMetrics,
        *,
        send_buffer_limit: int,
        control: dict[str, ControlHandler],
    ) -> None:
        # A name per replica, so operators (and tests) can find its pub/sub connection in CLIENT LIST.
        self.client_name = f"handin-router-{os.getpid()}-{secrets.token_hex(3)}"
        self.redis: Redis = Redis.from_url(redis_url, decode_responses=True, client_name=self.client_name)
        self.pubsub = self.redis.pubsub()
        self.metrics = metrics
        self.send_buffer_limit = send_buffer_limit
        self.control = control
        self.topics: dict[str, TopicState] = {}
        self._confirmations: dict[str, list[asyncio.Future[None]]] = defaultdict(list)
        # SUBSCRIBE and UNSUBSCRIBE go out in the order the topic table changed: a
        # release's UNSUBSCRIBE sent after a new SUBSCRIBE of the same channel would
        # silently cut that topic off.
        self._channel_changes = asyncio.Lock()
        self._exclusions: OrderedDict[tuple[str, int], Subscriber] = OrderedDict()
        self._reader: asyncio.Task[None] | None = None
        self._outbox: dict[Subscriber, list[bytes]] = {}
        self._flush_scheduled = False
        self.healthy = False

    # Lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        await self.pubsub.subscribe(*self.control)
        self.healthy = True
        self._reader = asyncio.create_task(self._read(), name="router-redis-reader")

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError, OSError):
            await self.pubsub.aclose()
        await self.redis.aclose()

    # Subscriptions ----------------------------------------------------------------

    def held_subscription(self, topic: str) -> int | None:
        """The topic's subscription id if Redis already delivers it here, else None (use ``subscribe``)."""
        held = self.topics.get(topic)
        if held is not None and held.ready.done() and not held.ready.cancelled() and not held.ready.exception():
            return held.subscription_id
        return None

    async def subscribe(self, topic: str) -> int:
        """Make sure Redis delivers `topic` here; returns the topic's subscription id.

        The caller sends SUBSCRIBED and then calls ``attach`` without awaiting in
        between, so no EVENT can precede SUBSCRIBED.
        """
        held = self.held_subscription(topic)
        if held is not None:
            return held  # already delivered here: nothing to wait for
        async with self._channel_changes:
            state = self.topics.get(topic)
            if state is None:
                channel = keys.events_channel(topic)
                ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                state = TopicState(random.randint(1, MAX_ID), ready)
                self.topics[topic] = state
                self._confirmations[channel].append(ready)
                self.metrics.redis_topics.set(len(self.topics))
                try:
                    await self.pubsub.subscribe(channel)
                except (RedisError, OSError) as error:
                    if not ready.done():
                        ready.set_exception(error)
            state.pending += 1
        try:
            await asyncio.wait_for(asyncio.shield(state.ready), SUBSCRIBE_CONFIRM_SECONDS)
        except BaseException:
            state.pending -= 1
            await self._release_if_unused(topic, state)
            raise
        state.pending -= 1
        return state.subscription_id

    def attach(self, subscriber: Subscriber, topic: str, audience: Audience) -> None:
        """Join `topic`; every event reaches this subscriber as `audience` sees it (core.audience)."""
        state = self.topics[topic]
        state.subscribers.add(subscriber)
        state.audiences[subscriber] = audience
        self.metrics.subscriptions.inc()

    def change_audience(self, subscriber: Subscriber, topic: str, audience: Audience) -> None:
        """Rights changed but the topic is still allowed: later events are shaped for the new audience."""
        state = self.topics.get(topic)
        if state is not None and subscriber in state.subscribers:
            state.audiences[subscriber] = audience

    async def detach(self, subscriber: Subscriber, topic: str) -> None:
        state = self.topics.get(topic)
        if state is None or subscriber not in state.subscribers:
            return
        state.subscribers.discard(subscriber)
        state.audiences.pop(subscriber, None)
        self.metrics.subscriptions.dec()
        await self._release_if_unused(topic, state)

    async def release(self, topic: str) -> None:
        """Undo a ``subscribe`` whose caller went away before ``attach``."""
        state = self.topics.get(topic)
        if state is not None:
            await self._release_if_unused(topic, state)

    async def _release_if_unused(self, topic: str, state: TopicState) -> None:
        async with self._channel_changes:
            if state.subscribers or state.pending or self.topics.get(topic) is not state:
                return
            del self.topics[topic]
            self.metrics.redis_topics.set(len(self.topics))
            with contextlib.suppress(RedisError, OSError):
                await self.pubsub.unsubscribe(keys.events_channel(topic))

    def exclude_once(self, topic: str, seq: int, subscriber: Subscriber) -> None:
        """Publisher exclusion: skip this subscriber when event (topic, seq) comes back from Redis."""
        self._exclusions[(topic, seq)] = subscriber
        while len(self._exclusions) > 10_000:
            self._exclusions.popitem(last=False)

    # Reading Redis -----------------------------------------------------------------

    async def _read(self) -> None:
        backoff = 0.1
        lost = False
        while True:
            try:
                async for message in self.pubsub.listen():
                    self.healthy = True
                    backoff = 0.1
                    self._on_message(message)
                    if lost and self._resubscribed(message):
                        lost = False
                        self.announce_gap()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as error:
                # redis-py reconnects and resubscribes on the next read; events in between are
                # in the audit trail and clients fetch them with after=seq.
                self.healthy = False
                lost = True
                log.warning("redis pubsub lost; reconnecting", extra={"error": str(error)})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
            except Exception:
                log.exception("router redis reader failed; continuing")
                await asyncio.sleep(backoff)

    def _resubscribed(self, message: dict[str, Any]) -> bool:
        """After a reconnect redis-py subscribes every channel again: true once the last one is confirmed
        (its count reaches the channels held) or anything else arrives."""
        if message.get("type") != "subscribe":
            return True
        count = message.get("data")
        return not isinstance(count, int) or count >= len(self.pubsub.channels)

    def announce_gap(self) -> None:
        """Redis was lost and is back: events published meanwhile never reached us. Tell every local
        subscriber of every topic (EVENT with details.gap), so pages fetch what they missed at once."""
        told = 0
        for topic, state in self.topics.items():
            frames: dict[str, bytes] = {}
            for subscriber in state.subscribers:
                name = subscriber.serializer.name
                if name not in frames:
                    publication = random.randint(1, MAX_ID)
                    frames[name] = websocket_frame(
                        encode_gap(subscriber.serializer, state.subscription_id, publication, topic)
                    )
                told += self.write(subscriber, frames[name])
        self.metrics.gaps.inc()
        log.warning("told sessions that events may have been missed", extra={"sessions": told})

    def _on_message(self, message: dict[str, Any]) -> None:
        kind, channel = message.get("type"), message.get("channel")
        if kind == "subscribe":
            waiters = self._confirmations.pop(channel, []) if isinstance(channel, str) else []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return
        if kind != "message" or not isinstance(channel, str):
            return
        data = message.get("data")
        if not isinstance(data, str):
            return
        handler = self.control.get(channel)
        if handler is not None:
            handler(data)
        elif channel.startswith(keys.EVENTS_CHANNEL_PREFIX):
            self.deliver(channel[len(keys.EVENTS_CHANNEL_PREFIX) :], data)

    # Fan-out -------------------------------------------------------------------------

    def deliver(self, topic: str, raw: str) -> int:
        """Send one event to every local subscriber of `topic`; returns how many got it."""
        state = self.topics.get(topic)
        if state is None or not state.subscribers:
            return 0
        try:
            envelope = json.loads(raw)
        except ValueError:
            log.warning("dropped a malformed event", extra={"topic": topic})
            return 0
        if not isinstance(envelope, dict) or type(envelope.get("seq")) is not int:
            log.warning("dropped an event without seq", extra={"topic": topic})
            return 0
        self.metrics.events_in.inc()
        seq: int = envelope["seq"]
        publication = publication_id(topic, seq)
        excluded = self._exclusions.pop((topic, seq), None)
        shaped: dict[Audience, dict[str, Any]] = {}
        frames: dict[tuple[str, Audience], Any] = {}
        groups: dict[tuple[str, Audience], list[Subscriber]] = defaultdict(list)
        for subscriber in state.subscribers:
            if subscriber is excluded:
                continue
            # Unknown means least: a subscriber never sees more than a fellow student would.
            audience = state.audiences.get(subscriber, Audience.MEMBER)
            key = (subscriber.serializer.name, audience)
            if key not in frames:
                if audience not in shaped:
                    shaped[audience] = project_event(envelope, audience)
                body = shaped[audience]
                if body is envelope and isinstance(subscriber.serializer, JsonSerializer):
                    frames[key] = encode_json_event(state.subscription_id, publication, raw)
                else:
                    frames[key] = encode_event(subscriber.serializer, state.subscription_id, publication, body)
            groups[key].append(subscriber)
        sent = 0
        for key, recipients in groups.items():
            wire = websocket_frame(frames[key])
            for subscriber in recipients:
                sent += self.write(subscriber, wire)
        self.metrics.events_out.inc(sent)
        return sent

    def write(self, subscriber: Subscriber, wire: bytes) -> bool:
        """Queue one serialised frame; all queued frames go out together at the end of this loop turn.

        Coalescing a burst into one write per connection saves a system call per event per
        subscriber, which is most of the fan-out cost.
        """
        if not subscriber.connection.open:
            return False
        pending = self._outbox.get(subscriber)
        if pending is None:
            self._outbox[subscriber] = [wire]
            if not self._flush_scheduled:
                self._flush_scheduled = True
                asyncio.get_running_loop().call_soon(self._flush)
        else:
            pending.append(wire)
        return True

    def write_now(self, subscriber: Subscriber, wire: bytes) -> None:
        """A protocol reply: written at once, after anything already queued for this subscriber."""
        frames = [*self._outbox.pop(subscriber, ()), wire]
        self._send(subscriber, frames)

    def _flush(self) -> None:
        self._flush_scheduled = False
        outbox, self._outbox = self._outbox, {}
        for subscriber, frames in outbox.items():
            self._send(subscriber, frames)

    def _send(self, subscriber: Subscriber, frames: list[bytes]) -> None:
        connection = subscriber.connection
        transport = connection.transport
        if not connection.open or transport is None or transport.is_closing():
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))
        if transport.get_write_buffer_size() > self.send_buffer_limit:
            subscriber.drop_slow()


def websocket_frame(message: str | bytes) -> bytes:
    """A whole server-to-client frame (unmasked, uncompressed), built once and written to every
    recipient as it is. websockets itself writes whole frames synchronously, so ours never
    interleave with its pings, pongs or close frames; replies flush queued events first.

    The header is built here (RFC 6455 section 5.2: FIN and opcode, then the length in 7, 7+16 or
    7+64 bits) rather than by websockets' Frame.serialize, which checks and buffers for the general
    case and cost more than the rest of a short reply's send.
    """
    if isinstance(message, str):
        payload, first = message.encode(), FIN_TEXT
    else:
        payload, first = message, FIN_BINARY
    length = len(payload)
    if length < 126:
        return bytes((first, length)) + payload
    if length < 65536:
        return bytes((first, 126)) + length.to_bytes(2, "big") + payload
    return bytes((first, 127)) + length.to_bytes(8, "big") + payload
