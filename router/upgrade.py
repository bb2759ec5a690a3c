"""The opening handshake's usual case, accepted without websockets' general HTTP machinery.

websockets parses an upgrade request with generator-based line readers, answers through its general
Headers and Response types and formats a Date header for every connection: about 85 µs of router
CPU per browser, a fifth of what a whole session costs (docs/performance.md). A browser's upgrade
request arrives whole in one read and is plain. ``accept_plain`` accepts exactly such a request,
with the checks websockets' ServerProtocol makes as the router configures it (RFC 6455 section
4.2.1: GET over HTTP/1.1, ``Connection: upgrade``, ``Upgrade: websocket``, a 16-byte key, version 13,
a subprotocol of ours offered, at most one Origin, no body; extension offers declined), and writes
the 101 itself.

It never refuses anything. A request split over reads or followed by more bytes, longer than
websockets' line limit, with a byte, header or token this module does not read exactly as
websockets would, or that websockets would refuse, gets None: the connection then hands the bytes to
websockets, which parses, checks and answers (or refuses) them as it always did.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formatdate

from websockets.datastructures import Headers, MultipleValuesError
from websockets.exceptions import InvalidHeaderFormat
from websockets.headers import parse_extension
from websockets.http11 import MAX_LINE_LENGTH, MAX_NUM_HEADERS, Request

# RFC 6455 section 1.3.
ACCEPT_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# websockets' own grammar for header names and values (RFC 7230 section 3.2), ASCII values only.
_TOKEN = re.compile(r"[-!#$%&'*+.^_`|~0-9a-zA-Z]+")
_VALUE = re.compile(r"[\x09\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class Accepted:
    request: Request  # for the router's own checks (path, Origin), as websockets would have parsed it
    subprotocol: str
    response: bytes  # the whole 101 answer


def accept_plain(data: bytes, subprotocols: Sequence[str]) -> Accepted | None:
    """The upgrade in ``data`` accepted, or None: let websockets parse and judge it."""
    request = plain_request(data)
    if request is None:
        return None
    headers = request.headers
    try:
        key = headers["Sec-WebSocket-Key"]
        version = headers["Sec-WebSocket-Version"]
        headers.get("Origin")  # more than one: websockets refuses
    except (KeyError, MultipleValuesError):
        return None
    connection = _tokens(headers.get_all("Connection"))
    upgrade = headers.get_all("Upgrade")
    if connection is None or "upgrade" not in {token.lower() for token in connection}:
        return None
    if len(upgrade) != 1 or upgrade[0].lower() != "websocket" or version != "13":
        return None
    try:
        if len(base64.b64decode(key.encode(), validate=True)) != 16:
            return None
        for offer in headers.get_all("Sec-WebSocket-Extensions"):
            parse_extension(offer)  # declined either way; a malformed offer is left to websockets
    except (binascii.Error, InvalidHeaderFormat):
        return None
    offered = _tokens(headers.get_all("Sec-WebSocket-Protocol"))
    chosen = next((ours for ours in subprotocols if offered and ours in offered), None)
    if chosen is None:
        return None
    accept = base64.b64encode(hashlib.sha1((key + ACCEPT_GUID).encode()).digest()).decode()
    response = (
        f"HTTP/1.1 101 Switching Protocols\r\nDate: {http_date()}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {chosen}\r\n\r\n"
    ).encode()
    return Accepted(request, chosen, response)


def plain_request(data: bytes) -> Request | None:
    """``data`` as exactly one whole GET request in plain ASCII, parsed as websockets parses it."""
    if len(data) > MAX_LINE_LENGTH or data.find(b"\r\n\r\n") != len(data) - 4:
        return None
    try:
        lines = data[:-4].decode("ascii").split("\r\n")
    except UnicodeDecodeError:
        return None
    request_line = lines[0].split(" ", 2)
    if len(request_line) != 3 or request_line[0] != "GET" or request_line[2] != "HTTP/1.1":
        return None
    if len(lines) - 1 > MAX_NUM_HEADERS:
        return None
    headers = Headers()
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        value = value.strip(" \t")
        if not colon or not _TOKEN.fullmatch(name) or not _VALUE.fullmatch(value):
            return None
        headers[name] = value
    if "Transfer-Encoding" in headers or "Content-Length" in headers:
        return None
    return Request(request_line[1], headers)


def _tokens(values: list[str]) -> list[str] | None:
    """A comma-separated list of tokens (the header may repeat), or None if any element is not one."""
    tokens = [token.strip(" \t") for value in values for token in value.split(",")]
    return tokens if all(_TOKEN.fullmatch(token) for token in tokens) else None


_date: tuple[int, str] = (0, "")


def http_date() -> str:
    """The Date header's value, formatted once per second."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, formatdate(second, usegmt=True))
    return _date[1]
