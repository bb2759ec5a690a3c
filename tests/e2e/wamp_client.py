"""A small WAMP v2 subscriber over `websockets`, as a browser page would speak it.

HELLO with the ticket auth method → CHALLENGE → AUTHENTICATE with the ticket
from GET /api/ws-ticket → WELCOME; then SUBSCRIBE and read EVENTs, whose only
positional argument is the event envelope ({seq, topic, type, at, data}).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

HELLO, WELCOME, ABORT, CHALLENGE, AUTHENTICATE, GOODBYE = 1, 2, 3, 4, 5, 6
SUBSCRIBE, SUBSCRIBED, EVENT = 32, 33, 36
ERROR = 8
REALM = "handin"


class WampError(Exception):
    pass


class WampSubscriber:
    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.request_ids = itertools.count(1)
        self.topics: dict[int, str] = {}

    @classmethod
    async def open(cls, url: str, ticket: str, origin: str | None = None) -> WampSubscriber:
        """`origin`: the page's, as a browser sends it; the router refuses origins off its allow-list."""
        connection = await connect(
            url,
            subprotocols=["wamp.2.json"],  # type: ignore[list-item]
            origin=origin,  # type: ignore[arg-type]
            open_timeout=15,
        )
        client = cls(connection)
        await client.send([HELLO, REALM, {"authmethods": ["ticket"], "roles": {"subscriber": {}}}])
        challenge = await client.receive()
        if challenge[0] != CHALLENGE:
            raise WampError(f"expected CHALLENGE, got {challenge}")
        await client.send([AUTHENTICATE, ticket, {}])
        welcome = await client.receive()
        if welcome[0] != WELCOME:
            raise WampError(f"expected WELCOME, got {welcome}")
        return client

    async def send(self, message: list[Any]) -> None:
        await self.connection.send(json.dumps(message))

    async def receive(self, wait_seconds: float = 30) -> list[Any]:
        return json.loads(await asyncio.wait_for(self.connection.recv(), wait_seconds))

    async def subscribe(self, topic: str) -> None:
        request = next(self.request_ids)
        await self.send([SUBSCRIBE, request, {}, topic])
        while True:
            reply = await self.receive()
            if reply[0] == SUBSCRIBED and reply[1] == request:
                self.topics[reply[2]] = topic
                return
            if reply[0] in (ERROR, ABORT):
                raise WampError(f"SUBSCRIBE {topic} refused: {reply}")

    async def next_event(self, wait_seconds: float = 60) -> dict[str, Any]:
        while True:
            message = await self.receive(wait_seconds)
            if message[0] == EVENT:
                return message[4][0]
            if message[0] in (ABORT, GOODBYE):
                raise WampError(f"session ended: {message}")

    async def close(self) -> None:
        await self.connection.close()
