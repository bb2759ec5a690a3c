"""router/wamp.py on its own: handshake, broker messages, errors, serializers."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from router import wamp
from router.wamp import BrokerSession, Phase

JSON = wamp.SERIALIZERS["wamp.2.json"]
MSGPACK = wamp.SERIALIZERS["wamp.2.msgpack"]
HELLO = [1, "handin", {"roles": {"subscriber": {}, "publisher": {}}, "authmethods": ["ticket"]}]


def frames(actions: list[wamp.Action]) -> list[list[Any]]:
    out = []
    for action in actions:
        if isinstance(action, wamp.Send):
            frame = action.frame
            out.append(json.loads(frame) if isinstance(frame, str) else msgpack.unpackb(frame))
    return out


def established(serializer: wamp.Serializer = JSON) -> BrokerSession:
    session = BrokerSession(serializer)
    session.receive(serializer.encode(HELLO))
    actions = session.receive(serializer.encode([5, "ticket-text", {}]))
    assert actions == [wamp.CheckTicket("ticket-text")]
    session.welcome(42, "7", "student")
    return session


@pytest.mark.parametrize("serializer", [JSON, MSGPACK], ids=["json", "msgpack"])
def test_handshake_challenges_for_a_ticket_then_welcomes_with_identity(serializer: wamp.Serializer) -> None:
    session = BrokerSession(serializer)
    assert frames(session.receive(serializer.encode(HELLO))) == [[4, "ticket", {}]]
    assert session.phase is Phase.CHALLENGED
    assert session.receive(serializer.encode([5, "t", {}])) == [wamp.CheckTicket("t")]
    welcome = frames([session.welcome(99, "7", "staff")])[0]
    assert welcome[:2] == [2, 99]
    details = welcome[2]
    assert (details["authid"], details["authrole"], details["authmethod"]) == ("7", "staff", "ticket")
    assert details["roles"] == {"broker": {"features": {"publisher_exclusion": True}}}


def test_wrong_realm_and_missing_ticket_method_abort() -> None:
    session = BrokerSession(JSON)
    assert frames(session.receive(JSON.encode([1, "other", HELLO[2]])))[0][2] == wamp.NO_SUCH_REALM
    session = BrokerSession(JSON)
    actions = session.receive(JSON.encode([1, "handin", {"roles": {"subscriber": {}}, "authmethods": ["anonymous"]}]))
    assert frames(actions)[0][2] == wamp.NO_AUTH_METHOD
    assert isinstance(actions[-1], wamp.CloseTransport) and session.phase is Phase.CLOSED


@pytest.mark.parametrize(
    "frame",
    [
        "not json",
        "{}",
        "[]",
        '["1"]',
        "[true]",
        '[1, "handin"]',
        '[1, "Handin..x", {"roles": {"subscriber": {}}}]',
        '[1, "handin", {}]',  # no roles
        "[2, 1, {}]",  # WELCOME comes from routers only
        "[36, 1, 1, {}]",
        '[48, 1, {}, "some.proc"]',  # CALL: no dealer role here
        "[999]",
        '[32, 1, {}, "submission.1"]',  # SUBSCRIBE before HELLO
    ],
)
def test_malformed_or_out_of_order_frames_abort_with_protocol_violation(frame: str) -> None:
    session = BrokerSession(JSON)
    actions = session.receive(frame)
    assert frames(actions)[0][0] == 3 and frames(actions)[0][2] == wamp.PROTOCOL_VIOLATION
    assert isinstance(actions[-1], wamp.CloseTransport)
    assert session.receive(JSON.encode(HELLO)) == []  # closed sessions answer nothing


def test_binary_frame_on_json_and_text_on_msgpack_are_violations() -> None:
    assert frames(BrokerSession(JSON).receive(b"[1]"))[0][2] == wamp.PROTOCOL_VIOLATION
    assert frames(BrokerSession(MSGPACK).receive("[1]"))[0][2] == wamp.PROTOCOL_VIOLATION


def test_second_hello_and_message_before_welcome_are_violations() -> None:
    session = established()
    assert frames(session.receive(JSON.encode(HELLO)))[0][2] == wamp.PROTOCOL_VIOLATION
    waiting = BrokerSession(JSON)
    waiting.receive(JSON.encode(HELLO))
    waiting.receive(JSON.encode([5, "t", {}]))
    assert frames(waiting.receive(JSON.encode([32, 1, {}, "user.1"])))[0][2] == wamp.PROTOCOL_VIOLATION


def test_subscribe_asks_the_server_and_records_the_subscription() -> None:
    session = established()
    assert session.receive(JSON.encode([32, 5, {}, "submission.420"])) == [wamp.SubscribeRequested(5, "submission.420")]
    assert frames([session.subscribed(5, "submission.420", 1234)]) == [[33, 5, 1234]]
    # Subscribing again returns the same subscription without asking again (spec).
    assert frames(session.receive(JSON.encode([32, 6, {}, "submission.420"]))) == [[33, 6, 1234]]
    actions = session.receive(JSON.encode([34, 7, 1234]))
    assert frames(actions) == [[35, 7]] and actions[-1] == wamp.UnsubscribeRequested("submission.420")
    assert frames(session.receive(JSON.encode([34, 8, 1234]))) == [[8, 34, 8, {}, wamp.NO_SUCH_SUBSCRIPTION, []]]


@pytest.mark.parametrize("topic", ["Submission.1", "submission..1", "a b", ".x", "x.", "x#y", "s" * 300])
def test_non_strict_topic_uris_get_invalid_uri(topic: str) -> None:
    session = established()
    reply = frames(session.receive(JSON.encode([32, 3, {}, topic])))[0]
    assert reply[:5] == [8, 32, 3, {}, wamp.INVALID_URI]


def test_pattern_subscriptions_are_refused_as_unsupported() -> None:
    reply = frames(established().receive(JSON.encode([32, 3, {"match": "prefix"}, "submission"])))[0]
    assert reply[4] == wamp.INVALID_ARGUMENT


def test_publish_defaults_exclude_me_and_only_acknowledged_errors_are_sent() -> None:
    session = established()
    actions = session.receive(JSON.encode([16, 9, {"acknowledge": True}, "course.3", ["hi"], {"a": 1}]))
    assert actions == [wamp.PublishRequested(9, "course.3", ["hi"], {"a": 1}, True, True)]
    actions = session.receive(JSON.encode([16, 10, {"exclude_me": False}, "course.3"]))
    assert actions == [wamp.PublishRequested(10, "course.3", [], {}, False, False)]
    assert session.receive(JSON.encode([16, 11, {}, "Bad URI"])) == []
    assert frames(session.receive(JSON.encode([16, 12, {"acknowledge": True}, "Bad URI"])))[0][4] == wamp.INVALID_URI


def test_goodbye_both_ways() -> None:
    session = established()
    actions = session.receive(JSON.encode([6, {}, "wamp.close.close_realm"]))
    assert frames(actions) == [[6, {}, wamp.GOODBYE_AND_OUT]] and isinstance(actions[-1], wamp.CloseTransport)
    session = established()
    assert frames(session.goodbye(wamp.SYSTEM_SHUTDOWN))[0][2] == wamp.SYSTEM_SHUTDOWN
    assert session.receive(JSON.encode([32, 1, {}, "user.1"])) == []  # ignored while closing
    assert isinstance(session.receive(JSON.encode([6, {}, wamp.GOODBYE_AND_OUT]))[-1], wamp.CloseTransport)


def test_ids_must_be_integers_in_range() -> None:
    for bad in (0, -1, 2**53 + 1, True, 1.5, "1"):
        session = established()
        assert frames(session.receive(JSON.encode([32, bad, {}, "user.1"])))[0][2] == wamp.PROTOCOL_VIOLATION


def test_event_encodings_agree() -> None:
    envelope = {"seq": 3, "topic": "submission.1", "type": "step.succeeded", "at": "x", "data": {"step": "scan"}}
    raw = json.dumps(envelope)
    assert json.loads(wamp.encode_json_event(5, 6, raw)) == json.loads(wamp.encode_event(JSON, 5, 6, envelope))
    assert msgpack.unpackb(wamp.encode_event(MSGPACK, 5, 6, envelope)) == [36, 5, 6, {}, [envelope], {}]
    assert wamp.publication_id("submission.1", 3) == wamp.publication_id("submission.1", 3)
    assert 1 <= wamp.publication_id("submission.1", 4) <= 2**53
