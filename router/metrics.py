"""Prometheus metrics of one router process, served on /metrics."""

from __future__ import annotations

import socket

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from router.listener import Gate, waiting_to_be_accepted


class RouterMetrics:
    def __init__(self) -> None:
        # A registry per router, so several routers in one test process don't collide.
        self.registry = CollectorRegistry()
        r = self.registry
        self.sessions = Gauge("handin_router_sessions", "Established WAMP sessions", registry=r)
        self.subscriptions = Gauge("handin_router_subscriptions", "Session subscriptions", registry=r)
        self.redis_topics = Gauge("handin_router_redis_topics", "Topics subscribed in Redis", registry=r)
        self.events_in = Counter("handin_router_events_in", "Events received from Redis", registry=r)
        self.events_out = Counter("handin_router_events_out", "EVENT messages written to sessions", registry=r)
        self.published = Counter("handin_router_client_publications", "Client PUBLISH stored", registry=r)
        self.slow_consumers = Counter(
            "handin_router_slow_consumers_dropped", "Sessions dropped for a send backlog past the bound", registry=r
        )
        self.auth_failures = Counter("handin_router_auth_failures", "Refused authentications", ["reason"], registry=r)
        self.denied = Counter("handin_router_denied", "Refused SUBSCRIBE/PUBLISH", ["action"], registry=r)
        self.protocol_errors = Counter("handin_router_protocol_violations", "Sessions aborted", registry=r)
        self.revoked = Counter(
            "handin_router_revoked_subscriptions", "Subscriptions ended because rights were withdrawn", registry=r
        )
        self.authz_timeouts = Counter(
            "handin_router_authz_timeouts", "Authorisation look-ups past the time limit", ["action"], registry=r
        )
        self.handshakes = Gauge(
            "handin_router_handshakes_in_flight", "Connections accepted and not yet welcomed", registry=r
        )
        self.accepting = Gauge(
            "handin_router_accepting", "1 while there is room for more handshakes, 0 while arrivals wait", registry=r
        )
        self.waiting = Gauge(
            "handin_router_waiting_to_be_accepted", "Connections held in the kernel's listen queue", registry=r
        )
        self.gaps = Counter(
            "handin_router_gaps_announced", "Redis reconnects after which sessions were told to catch up", registry=r
        )
        self.chat_refused = Counter("handin_router_chat_refused", "Class chat messages refused", ["reason"], registry=r)

    def watch(self, gate: Gate) -> None:
        self.handshakes.set_function(lambda: gate.inside)
        self.accepting.set_function(lambda: float(gate.inside < gate.bound))

    def watch_listener(self, sock: socket.socket) -> None:
        self.waiting.set_function(lambda: waiting_to_be_accepted(sock) or 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
