"""router.upgrade: the opening handshake's usual case accepted exactly as websockets accepts it.

Every request the short path accepts, websockets' ServerProtocol (configured as the router's) accepts
too, with the same Sec-WebSocket-Accept and subprotocol; whatever it is not sure of, it leaves to
websockets (None), which parses it and answers or refuses it as before.
"""

from __future__ import annotations

import base64
import logging
import secrets
from email.utils import formatdate

import pytest
from websockets.http11 import MAX_LINE_LENGTH, Request, Response
from websockets.server import ServerProtocol

from router import upgrade
from router.upgrade import accept_plain
from tests.fixtures.websocket_wire import read_whole

SUBPROTOCOLS = ["wamp.2.json", "wamp.2.msgpack"]
KEY = base64.b64encode(secrets.token_bytes(16)).decode()
BROWSER = [
    "GET /ws HTTP/1.1",
    "Host: handin.example.edu",
    "Connection: Upgrade",
    "Pragma: no-cache",
    "Cache-Control: no-cache",
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/131.0 Safari/537.36",
    "Upgrade: websocket",
    "Origin: https://handin.example.edu",
    "Sec-WebSocket-Version: 13",
    "Accept-Encoding: gzip, deflate, br",
    "Accept-Language: en-GB,en;q=0.9",
    f"Sec-WebSocket-Key: {KEY}",
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits",
    "Sec-WebSocket-Protocol: wamp.2.json",
]


def request(lines: list[str]) -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def replace(name: str, value: str | None) -> list[str]:
    """The browser's request with one header changed (None: removed)."""
    kept = [line for line in BROWSER if not line.lower().startswith(name.lower() + ":")]
    return kept if value is None else [*kept, f"{name}: {value}"]


def websockets_answer(data: bytes) -> tuple[ServerProtocol, Response | None]:
    """What websockets, configured as the router configures it, answers to these bytes."""
    protocol = ServerProtocol(subprotocols=SUBPROTOCOLS, max_size=65536, logger=logging.getLogger("test"))  # type: ignore[arg-type]
    protocol.receive_data(data)
    requests = [event for event in protocol.events_received() if isinstance(event, Request)]
    return protocol, (protocol.accept(requests[0]) if requests else None)


def parsed_response(data: bytes) -> Response:
    return read_whole(data, lambda reader: Response.parse(reader.read_line, reader.read_exact, reader.read_to_eof))


def test_a_browsers_upgrade_is_answered_as_websockets_answers_it() -> None:
    data = request(BROWSER)
    accepted = accept_plain(data, SUBPROTOCOLS)
    assert accepted is not None
    protocol, theirs = websockets_answer(data)
    assert theirs is not None and theirs.status_code == 101
    ours = parsed_response(accepted.response)
    assert ours.status_code == 101
    for name in ("Upgrade", "Connection", "Sec-WebSocket-Accept", "Sec-WebSocket-Protocol"):
        assert ours.headers[name] == theirs.headers[name], name
    assert "Sec-WebSocket-Extensions" not in ours.headers  # compression declined, as websockets does here
    assert accepted.subprotocol == protocol.subprotocol == "wamp.2.json"
    assert accepted.request.path == "/ws"
    assert accepted.request.headers["Origin"] == "https://handin.example.edu"


@pytest.mark.parametrize(
    ("lines", "chosen"),
    [
        (replace("Sec-WebSocket-Protocol", "wamp.2.msgpack, wamp.2.json"), "wamp.2.json"),  # the server's preference
        (replace("Sec-WebSocket-Protocol", "mqtt, wamp.2.msgpack"), "wamp.2.msgpack"),
        (replace("Connection", "keep-alive, Upgrade"), "wamp.2.json"),
        (replace("Upgrade", "WebSocket"), "wamp.2.json"),
        (replace("Sec-WebSocket-Extensions", None), "wamp.2.json"),
    ],
)
def test_other_acceptable_upgrades_agree_with_websockets(lines: list[str], chosen: str) -> None:
    data = request(lines)
    accepted = accept_plain(data, SUBPROTOCOLS)
    protocol, theirs = websockets_answer(data)
    assert theirs is not None and theirs.status_code == 101
    assert accepted is not None and accepted.subprotocol == protocol.subprotocol == chosen
    assert parsed_response(accepted.response).headers["Sec-WebSocket-Accept"] == theirs.headers["Sec-WebSocket-Accept"]


REFUSED_BY_WEBSOCKETS = {
    "POST": ["POST /ws HTTP/1.1", *BROWSER[1:]],
    "HTTP/1.0": ["GET /ws HTTP/1.0", *BROWSER[1:]],
    "no key": replace("Sec-WebSocket-Key", None),
    "short key": replace("Sec-WebSocket-Key", base64.b64encode(b"x" * 15).decode()),
    "two keys": [*BROWSER, f"Sec-WebSocket-Key: {KEY}"],
    "version 8": replace("Sec-WebSocket-Version", "8"),
    "upgrade h2c": replace("Upgrade", "h2c"),
    "keep-alive only": replace("Connection", "keep-alive"),
    "no subprotocol": replace("Sec-WebSocket-Protocol", None),
    "not our subprotocol": replace("Sec-WebSocket-Protocol", "chat"),
    "a body": [*BROWSER, "Content-Length: 0"],
    "two origins": [*BROWSER, "Origin: https://elsewhere.example"],
    "header without a colon": [*BROWSER, "X-Broken"],
    "bad header name": [*BROWSER, "X Broken: 1"],
}
LEFT_TO_WEBSOCKETS = {
    **REFUSED_BY_WEBSOCKETS,
    "non-ASCII value": [*BROWSER, "X-Name: Zoë"],
    "malformed extension offer": replace("Sec-WebSocket-Extensions", "permessage-deflate; =x"),
    "empty list element": replace("Connection", "Upgrade,,keep-alive"),
    "too many headers": [*BROWSER, *(f"X-Filler-{i}: {i}" for i in range(130))],
    "too long": [*BROWSER, "X-Long: " + "a" * MAX_LINE_LENGTH],
}


@pytest.mark.parametrize("case", sorted(LEFT_TO_WEBSOCKETS))
def test_anything_unusual_is_left_to_websockets(case: str) -> None:
    data = request(LEFT_TO_WEBSOCKETS[case])
    assert accept_plain(data, SUBPROTOCOLS) is None
    if case in REFUSED_BY_WEBSOCKETS:  # and websockets does refuse it
        _protocol, theirs = websockets_answer(data)
        assert theirs is None or theirs.status_code != 101, case


def test_a_request_not_whole_in_one_read_or_followed_by_more_is_left_to_websockets() -> None:
    data = request(BROWSER)
    assert accept_plain(data[:-2], SUBPROTOCOLS) is None
    assert accept_plain(data + b"\x81\x05hello", SUBPROTOCOLS) is None
    assert accept_plain(data.replace(b"\r\n", b"\n"), SUBPROTOCOLS) is None


def test_the_date_header_is_httpdate_and_formatted_once_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upgrade, "_date", (0, ""))
    monkeypatch.setattr(upgrade.time, "time", lambda: 1_780_000_000.25)
    assert upgrade.http_date() == formatdate(1_780_000_000, usegmt=True)
    calls: list[float] = []
    monkeypatch.setattr(upgrade, "formatdate", lambda *args, **kwargs: calls.append(args[0]) or "x")
    upgrade.http_date()
    assert calls == []  # the same second: not formatted again
