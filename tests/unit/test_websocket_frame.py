"""router.broker.websocket_frame: the frames the router writes itself are what a WebSocket client parses."""

from __future__ import annotations

import pytest
from websockets.frames import OP_BINARY, OP_TEXT, Frame

from router.broker import websocket_frame
from tests.fixtures.websocket_wire import read_whole


def parsed(wire: bytes) -> Frame:
    """The frame as websockets' client side reads it (unmasked, from the server)."""
    return read_whole(wire, lambda reader: Frame.parse(reader.read_exact, mask=False, max_size=None))


# Each length field's edges: 7 bits, 7+16 bits, 7+64 bits.
@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 200_000])
def test_text_and_binary_frames_of_every_length_field_size_read_back_whole(length: int) -> None:
    text = "é" * (length // 2) + "x" * (length % 2)  # two bytes per é: exactly `length` bytes
    frame = parsed(websocket_frame(text))
    assert (frame.opcode, frame.fin, frame.data.decode()) == (OP_TEXT, True, text)

    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    frame = parsed(websocket_frame(data))
    assert (frame.opcode, frame.fin, bytes(frame.data)) == (OP_BINARY, True, data)
