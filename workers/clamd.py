"""A small async client for clamd: PING, VERSION and INSTREAM, over TCP or a unix socket.

INSTREAM sends the file as chunks, each prefixed with its length as a 4-byte
big-endian integer, and a zero-length chunk to finish; clamd answers with one
line ending in NUL: ``stream: OK``, ``stream: <signature> FOUND`` or an error
such as ``INSTREAM size limit exceeded. ERROR``. Commands use the ``z`` prefix
(NUL-terminated). Nothing here buffers a whole file.

``scan`` asks for the verdict and for the engine that gave it (VERSION) in one
session (IDSESSION … END): one connection per file, not two. In a session each
answer starts with its command's number (``1: stream: OK``).
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterable
from dataclasses import dataclass

from core.settings import ScannerSettings

# clamd reads chunks into a buffer of its own; 64 KiB keeps each one small.
MAX_CHUNK = 64 * 1024
_END_OF_STREAM = struct.pack(">I", 0)
_MAX_REPLY = 64 * 1024


class ClamdError(Exception):
    """clamd answered, but with an error: retrying the same file will not help."""


class ClamdSizeLimitExceeded(ClamdError):
    """The file is larger than clamd's ``StreamMaxLength``."""


class ClamdUnavailable(Exception):
    """clamd could not be reached or did not answer in time: this may pass."""


@dataclass(frozen=True)
class ScanVerdict:
    infected: bool
    signature: str | None
    reply: str


def parse_scan_reply(reply: str) -> ScanVerdict:
    """Turn clamd's INSTREAM answer into a verdict, or raise for an error answer."""
    text = _unnumbered(reply)
    _, _, body = text.partition(": ") if text.startswith("stream:") else ("", "", text)
    if body == "OK":
        return ScanVerdict(infected=False, signature=None, reply=text)
    if body.endswith(" FOUND"):
        return ScanVerdict(infected=True, signature=body[: -len(" FOUND")].strip(), reply=text)
    if "size limit exceeded" in text:
        raise ClamdSizeLimitExceeded(text)
    raise ClamdError(text or "empty answer from clamd")


def _unnumbered(reply: str) -> str:
    """An answer without its NUL and, in a session, without its command's number."""
    text = reply.rstrip("\0").strip()
    number, separator, rest = text.partition(": ")
    return rest if separator and number.isdigit() else text


def frame_chunk(chunk: bytes) -> list[bytes]:
    """INSTREAM frames for one piece of the file: length prefix + data, split to MAX_CHUNK."""
    frames: list[bytes] = []
    for start in range(0, len(chunk), MAX_CHUNK):
        part = chunk[start : start + MAX_CHUNK]
        frames.append(struct.pack(">I", len(part)) + part)
    return frames


class ClamdClient:
    def __init__(
        self,
        *,
        host: str | None = None,
        port: int = 3310,
        socket_path: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        if not host and not socket_path:
            raise ValueError("clamd needs a host or a unix socket path")
        self.host = host
        self.port = port
        self.socket_path = socket_path
        self.timeout = timeout

    @classmethod
    def from_settings(cls, scanner: ScannerSettings) -> ClamdClient:
        return cls(
            host=scanner.clamd_host,
            port=scanner.clamd_port,
            socket_path=scanner.clamd_socket,
            timeout=scanner.timeout_seconds,
        )

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}" if self.socket_path else f"{self.host}:{self.port}"

    async def ping(self) -> bool:
        return await self._command(b"zPING\0") == "PONG"

    async def version(self) -> str:
        return await self._command(b"zVERSION\0")

    async def instream(self, chunks: AsyncIterable[bytes]) -> ScanVerdict:
        """Stream the file to clamd and return its verdict."""
        verdict, _ = await self._scan(chunks, with_engine=False)
        return verdict

    async def scan(self, chunks: AsyncIterable[bytes]) -> tuple[ScanVerdict, str]:
        """Stream the file to clamd: its verdict, and the engine and signatures that gave it (VERSION)."""
        verdict, engine = await self._scan(chunks, with_engine=True)
        assert engine is not None
        return verdict, engine

    async def _scan(self, chunks: AsyncIterable[bytes], *, with_engine: bool) -> tuple[ScanVerdict, str | None]:
        engine = None
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect()
                try:
                    if with_engine:
                        writer.write(b"zIDSESSION\0")
                    # Read while sending: clamd answers early (and hangs up) when a limit is
                    # passed, and that answer must be caught before the connection resets.
                    answer = asyncio.ensure_future(self._read_reply(reader))
                    try:
                        await self._send_stream(writer, chunks, answer)
                        verdict = parse_scan_reply(await answer)
                    finally:
                        answer.cancel()
                    if with_engine:
                        writer.write(b"zVERSION\0")
                        await writer.drain()
                        engine = _unnumbered(await self._read_reply(reader))
                        writer.write(b"zEND\0")
                finally:
                    await _close(writer)
        except TimeoutError as error:
            raise ClamdUnavailable(f"clamd at {self.address} did not answer within {self.timeout:g} s") from error
        except OSError as error:
            raise ClamdUnavailable(f"clamd at {self.address} unreachable: {error}") from error
        return verdict, engine

    async def _send_stream(
        self, writer: asyncio.StreamWriter, chunks: AsyncIterable[bytes], answer: asyncio.Future[str]
    ) -> None:
        try:
            writer.write(b"zINSTREAM\0")
            async for chunk in chunks:
                for frame in frame_chunk(chunk):
                    if answer.done():
                        return  # clamd has answered before the end: it stopped reading
                    writer.write(frame)
                    await writer.drain()
            writer.write(_END_OF_STREAM)
            await writer.drain()
        except (BrokenPipeError, ConnectionResetError):
            # clamd stops reading once a limit is passed and says why before it
            # hangs up: its answer is what counts.
            pass

    async def _command(self, command: bytes) -> str:
        try:
            async with asyncio.timeout(self.timeout):
                reader, writer = await self._connect()
                try:
                    writer.write(command)
                    await writer.drain()
                    return (await self._read_reply(reader)).rstrip("\0").strip()
                finally:
                    await _close(writer)
        except TimeoutError as error:
            raise ClamdUnavailable(f"clamd at {self.address} did not answer within {self.timeout:g} s") from error
        except OSError as error:
            raise ClamdUnavailable(f"clamd at {self.address} unreachable: {error}") from error

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.socket_path:
            return await asyncio.open_unix_connection(self.socket_path)
        assert self.host is not None
        return await asyncio.open_connection(self.host, self.port)

    @staticmethod
    async def _read_reply(reader: asyncio.StreamReader) -> str:
        data = bytearray()
        while not data.endswith(b"\0") and len(data) < _MAX_REPLY:
            try:
                piece = await reader.read(4096)
            except ConnectionResetError:
                # clamd answers a passed limit and hangs up on the bytes it did not read (a reset). When the
                # answer and the reset arrive in one loop turn, StreamReader.read raises the reset before
                # handing over the answer it already holds: that answer is what counts.
                data += bytes(getattr(reader, "_buffer", b""))
                if not data:
                    raise
                break
            if not piece:
                break
            data += piece
        if not data:
            raise ConnectionResetError("clamd closed the connection without an answer")
        return data.decode("utf-8", "replace")


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close and wait, so no transport outlives the scan (and its event loop)."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
