"""Property tests: whatever a peer sends, router/wamp.py answers in a defined way and never raises."""

from __future__ import annotations

import json
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from router import wamp
from router.wamp import BrokerSession, Phase

JSON = wamp.SERIALIZERS["wamp.2.json"]
MSGPACK = wamp.SERIALIZERS["wamp.2.msgpack"]
HELLO = [1, "handin", {"roles": {"subscriber": {}}, "authmethods": ["ticket"]}]

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False) | st.text()
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12,
)
codes = st.sampled_from([1, 2, 3, 4, 5, 6, 8, 16, 17, 32, 33, 34, 35, 36, 48, 64, 70, 0, -1, 999])
uris = st.sampled_from(["handin", "user.1", "submission.2", "course.3", "Bad Uri", "", "x..y", "staff.dashboard"])
ids = st.integers(-2, 2**53 + 2) | st.booleans() | st.text(max_size=3)
# Messages that look like WAMP (the right code, fields of plausible types) reach deeper states than noise.
fields = ids | uris | st.dictionaries(st.text(max_size=6), values)
plausible = st.builds(lambda code, rest: [code, *rest], codes, st.lists(fields, max_size=5))
messages = plausible | st.lists(values, max_size=6) | values


def check_reply(actions: list[wamp.Action], session: BrokerSession, serializer: wamp.Serializer) -> None:
    for action in actions:
        assert isinstance(
            action,
            wamp.Send
            | wamp.CloseTransport
            | wamp.CheckTicket
            | wamp.SubscribeRequested
            | wamp.UnsubscribeRequested
            | wamp.PublishRequested,
        )
        if isinstance(action, wamp.Send):
            decoded: Any = json.loads(action.frame) if serializer is JSON else msgpack.unpackb(action.frame)
            assert isinstance(decoded, list) and decoded[0] in (2, 3, 4, 6, 8, 17, 33, 35, 36)
            if decoded[0] == 3:  # an ABORT always ends the session
                assert session.phase is Phase.CLOSED
                assert isinstance(actions[-1], wamp.CloseTransport)


def drive(session: BrokerSession, serializer: wamp.Serializer, frame: str | bytes) -> list[wamp.Action]:
    actions = session.receive(frame)
    check_reply(actions, session, serializer)
    # Play the server's part so later messages meet every phase.
    for action in actions:
        if isinstance(action, wamp.CheckTicket) and session.phase is Phase.AUTHENTICATING:
            session.welcome(1, "1", "student")
        if isinstance(action, wamp.SubscribeRequested):
            session.subscribed(action.request, action.topic, 77)
    return actions


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | st.text(max_size=200))
def test_arbitrary_frames_never_crash(frame: bytes | str) -> None:
    for serializer in (JSON, MSGPACK):
        session = BrokerSession(serializer)
        drive(session, serializer, frame)


@settings(max_examples=150, deadline=None)
@given(st.lists(messages, max_size=8), st.booleans(), st.sampled_from(["json", "msgpack"]))
def test_message_sequences_never_crash(sequence: list[Any], handshake_first: bool, kind: str) -> None:
    serializer = JSON if kind == "json" else MSGPACK
    session = BrokerSession(serializer)
    if handshake_first:
        sequence = [HELLO, [5, "t", {}], *sequence]
    for message in sequence:
        try:
            frame = serializer.encode(message) if isinstance(message, list) else serializer.encode([message])
        except (TypeError, ValueError, OverflowError):
            continue  # not representable in this serializer, so no peer can send it
        drive(session, serializer, frame)
    if session.phase is Phase.CLOSED:
        assert session.receive(serializer.encode(HELLO)) == []
