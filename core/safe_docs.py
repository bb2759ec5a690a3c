"""Reading parts of untrusted zip-based documents (DOCX) within fixed bounds.

Anyone with an account can upload a hostile file. A DOCX is a zip of XML
parts, and both layers can be turned against the reader:

- the zip: a central directory of many thousands of members (each costs memory
  before anything is read), a member that inflates a thousandfold (a zip bomb),
  a member whose declared size understates what it inflates to, encryption or
  a compression method the standard library lacks;
- the XML: a DTD whose entities expand exponentially (billion laughs) or
  quadratically, or an external entity pointing at a local file (XXE), in any
  encoding the parser accepts: a UTF-16 part hides ``<!DOCTYPE`` from a search
  of the raw bytes.

So the central directory is measured from the zip's end record before
``zipfile`` reads it, members are counted, a member that declares more than
the limit is refused, and a member is read in fixed chunks that stop at the
limit whatever it declared. XML is parsed by defusedxml with any DTD refused
(Word never writes one), as a stream of events with finished elements
dropped, so a part's tree is never built whole. Every refusal is an
``UnreadableDocument`` whose text begins "this document could not be read":
callers show it to the student and do not retry, since the file will not change.

defusedxml is imported only when XML is parsed: the api imports this module
(through core.similarity) and does not carry it.
"""

from __future__ import annotations

import contextlib
import io
import struct
import zipfile
import zlib
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import IO
from xml.etree.ElementTree import Element, ParseError

UNREADABLE = "this document could not be read"
# A real DOCX has tens of parts, a few hundred with many pictures.
MAX_MEMBERS = 2_000
# Bounds what zipfile allocates for the member list before any member is read (~20,000 entries at most).
MAX_CENTRAL_DIRECTORY_BYTES = 1024 * 1024
CHUNK_BYTES = 64 * 1024

_END_RECORD = struct.Struct("<4s4H2LH")
_END_SIGNATURE = b"PK\x05\x06"
_ZIP64_MARKERS = (0xFFFF, 0xFFFFFFFF)


class UnreadableDocument(Exception):
    """The file claims a kind whose content cannot (or must not) be read; retrying will not help."""


def refused(reason: str) -> UnreadableDocument:
    return UnreadableDocument(f"{UNREADABLE}: {reason}")


def check_central_directory(handle: IO[bytes]) -> None:
    """Refuse a zip whose member list is too big, from its end record alone."""
    handle.seek(0, io.SEEK_END)
    size = handle.tell()
    tail_size = min(size, _END_RECORD.size + 0xFFFF)  # the end record, then a comment of up to 64 KiB
    handle.seek(size - tail_size)
    tail = handle.read(tail_size)
    at = tail.rfind(_END_SIGNATURE)
    if at < 0 or len(tail) - at < _END_RECORD.size:
        raise refused("it is not a DOCX (zip) file")
    _, _, _, _, entries, directory_size, _, _ = _END_RECORD.unpack_from(tail, at)
    # Zip64 (over 65,535 members or 4 GiB) is far beyond any document.
    if entries in _ZIP64_MARKERS or directory_size in _ZIP64_MARKERS:
        raise refused("the archive is too large")
    if entries > MAX_MEMBERS or directory_size > MAX_CENTRAL_DIRECTORY_BYTES:
        raise refused(f"the archive has too many parts (over {MAX_MEMBERS:,})")


class BoundedReader:
    """A zip member as a binary stream that fails once more than ``limit`` bytes came out of it."""

    def __init__(self, member: IO[bytes], limit: int) -> None:
        self.member = member
        self.limit = limit
        self.total = 0

    def read(self, size: int | None = -1) -> bytes:
        want = CHUNK_BYTES if size is None or size < 0 else min(size, CHUNK_BYTES)
        try:
            data = self.member.read(want)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError) as error:
            raise refused("a part of the archive is damaged") from error
        self.total += len(data)
        if self.total > self.limit:
            # The declared size was within the limit, but the data inflates past it.
            raise refused(f"a part inflates to more than {self.limit:,} bytes")
        return data


@contextlib.contextmanager
def zip_member(path: Path, name: str, max_bytes: int) -> Iterator[BoundedReader]:
    """The member ``name`` of the zip at ``path``, readable up to ``max_bytes`` inflated bytes."""
    try:
        with open(path, "rb") as handle:
            check_central_directory(handle)
            handle.seek(0)
            with zipfile.ZipFile(handle) as archive:
                if len(archive.infolist()) > MAX_MEMBERS:
                    raise refused(f"the archive has too many parts (over {MAX_MEMBERS:,})")
                try:
                    info = archive.getinfo(name)
                except KeyError:
                    raise refused(f"it has no {name}") from None
                if info.file_size > max_bytes:
                    raise refused(f"{name} is too large ({info.file_size:,} bytes inflated, limit {max_bytes:,})")
                with archive.open(info) as member:
                    yield BoundedReader(member, max_bytes)
    except UnreadableDocument:
        raise
    # Encrypted members raise RuntimeError, unknown compression methods NotImplementedError.
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError) as error:
        raise refused("it is not a valid DOCX (zip) file") from error


def xml_events(source: BoundedReader | IO[bytes]) -> Generator[tuple[str, Element], None, None]:
    """("start" | "end", element) for each element of the XML in ``source``, with DTDs refused.

    Once an "end" has been handled the element is removed from its parent, so
    memory holds the open elements and the one just closed, not the document.
    An element's text is complete at its "end", not at its "start".
    """
    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    open_elements: list[Element] = []
    try:
        for event, element in iterparse(
            source, events=("start", "end"), forbid_dtd=True, forbid_entities=True, forbid_external=True
        ):
            if event == "start":
                open_elements.append(element)
                yield event, element
                continue
            open_elements.pop()
            yield event, element
            if open_elements:
                del open_elements[-1][:]  # the closed element is the parent's last child
    except DefusedXmlException as error:
        raise refused("it declares a DTD or entities, which Word never writes") from error
    except ParseError as error:
        raise refused(f"its XML is broken ({error})") from error
