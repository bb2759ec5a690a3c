"""Reads a multipart/form-data body part by part straight off the request stream.

Starlette's ``request.form()`` spools the whole body before the app sees a
byte; an upload limit must bite while the bytes arrive, so this feeds
python-multipart's push parser one network chunk at a time and hands the
file part's data on as it comes. At most one network chunk is held.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect


class MalformedUpload(Exception):
    """The body is not the multipart/form-data it claims to be."""


class BodyTooLarge(Exception):
    """The whole body passed the limit (the file, or fields around it)."""


@dataclass(frozen=True)
class PartHeaders:
    name: str
    filename: str | None
    content_type: str | None


def boundary_of(content_type: str | None) -> bytes:
    kind, options = parse_options_header(content_type or "")
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise MalformedUpload("send the file as multipart/form-data")
    return boundary


class MultipartStream:
    def __init__(self, boundary: bytes, stream: AsyncIterator[bytes], max_body_bytes: int | None = None) -> None:
        self._stream = stream
        self._max_body_bytes = max_body_bytes
        self.body_bytes = 0
        self._finished = False
        self._events: deque[tuple[str, object]] = deque()
        self._header_name = bytearray()
        self._header_value = bytearray()
        self._headers: dict[bytes, bytes] = {}
        self._parser = MultipartParser(
            boundary,
            {
                "on_part_begin": self._on_part_begin,
                "on_header_field": self._on_header_field,
                "on_header_value": self._on_header_value,
                "on_header_end": self._on_header_end,
                "on_headers_finished": self._on_headers_finished,
                "on_part_data": self._on_part_data,
                "on_part_end": self._on_part_end,
            },
        )

    async def next_file(self, field: str) -> PartHeaders | None:
        """Skip ahead to the part named ``field``; None if the body has none."""
        while (event := await self._next_event()) is not None:
            kind, value = event
            if kind == "headers" and isinstance(value, PartHeaders) and value.name == field:
                return value
        return None

    async def part_data(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as they arrive."""
        while (event := await self._next_event()) is not None:
            kind, value = event
            if kind == "data" and isinstance(value, bytes):
                yield value
            elif kind == "end":
                return
        raise MalformedUpload("the body ended inside the file")

    async def drain(self, limit: int) -> bool:
        """Read and drop what is left of the body, up to ``limit`` bytes; True if it all came.

        Draining before answering an early refusal lets the client see the
        answer instead of a reset connection.
        """
        dropped = 0
        try:
            async for chunk in self._stream:
                dropped += len(chunk)
                if dropped > limit:
                    return False
        except ClientDisconnect:
            return False
        return True

    async def _next_event(self) -> tuple[str, object] | None:
        while not self._events:
            if self._finished:
                return None
            chunk = await anext(self._stream, b"")
            try:
                if chunk:
                    self.body_bytes += len(chunk)
                    if self._max_body_bytes is not None and self.body_bytes > self._max_body_bytes:
                        raise BodyTooLarge()
                    self._parser.write(chunk)
                else:
                    self._parser.finalize()
                    self._finished = True
            except MultipartParseError as error:
                raise MalformedUpload(str(error)) from error
        return self._events.popleft()

    # Parser callbacks: they only queue events, the async side consumes them.
    def _on_part_begin(self) -> None:
        self._headers = {}

    def _on_header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _on_header_value(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _on_header_end(self) -> None:
        self._headers[bytes(self._header_name).strip().lower()] = bytes(self._header_value).strip()
        self._header_name.clear()
        self._header_value.clear()

    def _on_headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get(b"content-disposition", b""))
        filename = options.get(b"filename")
        content_type = self._headers.get(b"content-type")
        self._events.append(
            (
                "headers",
                PartHeaders(
                    name=options.get(b"name", b"").decode("utf-8", "replace"),
                    filename=_unescape_filename(filename.decode("utf-8", "replace")) if filename is not None else None,
                    content_type=content_type.decode("latin-1") if content_type else None,
                ),
            )
        )

    def _on_part_data(self, data: bytes, start: int, end: int) -> None:
        if self._events and self._events[-1][0] == "data":
            previous = self._events.pop()[1]
            assert isinstance(previous, bytes)
            self._events.append(("data", previous + data[start:end]))
        else:
            self._events.append(("data", bytes(data[start:end])))

    def _on_part_end(self) -> None:
        self._events.append(("end", None))


def _unescape_filename(name: str) -> str:
    """Browsers send `"`, CR and LF in a filename as %22, %0D, %0A (WHATWG HTML form encoding)."""
    return name.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")
