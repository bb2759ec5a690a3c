"""What a file really is (by its first bytes, never its name), and a safe name to show for it."""

from __future__ import annotations

import codecs
import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

# How much of the start of a file `sniff` wants: enough to find a DOCX's
# `word/document.xml` entry, which Word and LibreOffice write near the front.
SNIFF_BYTES = 64 * 1024

FALLBACK_NAME = "submission"
MAX_NAME_BYTES = 255
_MAX_EXTENSION_CHARS = 16

# Kinds as an assignment lists them in `accepted_types`.
PDF, IMAGE, DOCX, ZIP, TEXT = "pdf", "image", "docx", "zip", "text"
TEXT_CONTENT_TYPE = "text/plain; charset=utf-8"

_UNSAFE_NAME_CHARS = re.compile(r'[/\\:*?"<>|]')
_WINDOWS_RESERVED = re.compile(r"(CON|PRN|AUX|NUL|COM[0-9]|LPT[0-9])(\..*)?", re.IGNORECASE)
# C0 controls and DEL that never occur in text (tab, newlines, form feed and ESC may).
_BINARY_CONTROLS = bytes([*range(0x00, 0x09), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
# Deleting every other byte leaves only the binary controls: a C-speed scan of large uploads.
_NOT_BINARY_CONTROLS = bytes(b for b in range(256) if b not in _BINARY_CONTROLS)
_HIDDEN = ("Cc", "Cf", "Cs", "Zl", "Zp")
_EXTENSION = re.compile(rf"\.[A-Za-z0-9]{{1,{_MAX_EXTENSION_CHARS}}}")


@dataclass(frozen=True)
class Sniffed:
    kind: str  # pdf | image | docx | zip | text
    content_type: str


def sniff(prefix: bytes, *, complete: bool = False) -> Sniffed | None:
    """Identify a file from its first bytes; None when it is none of the kinds we know.

    ``complete`` says the prefix is the whole file, so a multi-byte character
    cut off at the end counts as invalid text rather than as truncation.
    """
    if prefix.startswith(b"%PDF-"):
        return Sniffed(PDF, "application/pdf")
    if prefix.startswith(b"\x89PNG\r\n\x1a\n"):
        return Sniffed(IMAGE, "image/png")
    if prefix.startswith(b"\xff\xd8\xff"):
        return Sniffed(IMAGE, "image/jpeg")
    if prefix.startswith((b"GIF87a", b"GIF89a")):
        return Sniffed(IMAGE, "image/gif")
    if len(prefix) >= 12 and prefix[:4] == b"RIFF" and prefix[8:12] == b"WEBP":
        return Sniffed(IMAGE, "image/webp")
    if prefix.startswith(b"PK\x03\x04"):
        if b"word/document.xml" in prefix:
            return Sniffed(DOCX, "application/vnd.openxmlformats-officedocument.wordprocessingml.document")
        return Sniffed(ZIP, "application/zip")
    if prefix and _looks_like_text(prefix, final=complete):
        return Sniffed(TEXT, TEXT_CONTENT_TYPE)
    return None


def _looks_like_text(data: bytes, *, final: bool) -> bool:
    checker = TextCheck()
    return checker.feed(data) and (not final or checker.finish())


class TextCheck:
    """Checks a stream stays valid UTF-8 without NUL bytes, chunk by chunk."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("strict")
        self.valid = True

    def feed(self, chunk: bytes) -> bool:
        if self.valid:
            try:
                self._decoder.decode(chunk, final=False)
            except UnicodeDecodeError:
                self.valid = False
            else:
                self.valid = not chunk.translate(None, _NOT_BINARY_CONTROLS)
        return self.valid

    def finish(self) -> bool:
        if self.valid:
            try:
                self._decoder.decode(b"", final=True)
            except UnicodeDecodeError:
                self.valid = False
        return self.valid


def accepts(accepted_types: Iterable[str], sniffed: Sniffed) -> bool:
    """An assignment with no list accepts every kind we can identify."""
    accepted = set(accepted_types)
    return not accepted or sniffed.kind in accepted


def sanitise_filename(name: str | None, *, max_bytes: int = MAX_NAME_BYTES, fallback: str = FALLBACK_NAME) -> str:
    """A display name that is safe to keep, log and send back in Content-Disposition.

    Drops any directory part (both slash kinds), control and invisible format
    characters (e.g. right-to-left overrides), characters Windows forbids, and
    leading/trailing dots and spaces; normalises to NFC; shortens to
    ``max_bytes`` of UTF-8 keeping the extension.
    """
    text = unicodedata.normalize("NFC", name or "")
    text = re.split(r"[/\\]", text)[-1]
    # Whitespace of any kind becomes a space, other invisible characters go, then runs of spaces collapse.
    text = "".join(
        " " if ch.isspace() else ch for ch in text if ch.isspace() or unicodedata.category(ch) not in _HIDDEN
    )
    text = " ".join(text.split())
    text = _UNSAFE_NAME_CHARS.sub("_", text)
    text = text.strip(" .")
    if not text:
        return fallback
    if _WINDOWS_RESERVED.fullmatch(text):
        text = f"_{text}"
    return _shorten(text, max_bytes)


def _shorten(name: str, max_bytes: int) -> str:
    if len(name.encode()) <= max_bytes:
        return name
    stem, dot, extension = name.rpartition(".")
    suffix = f".{extension}" if dot and stem and _EXTENSION.fullmatch(f".{extension}") else ""
    if suffix:
        name = stem
    budget = max_bytes - len(suffix.encode())
    shortened = name.encode()[:budget].decode("utf-8", "ignore").rstrip(" .")
    return f"{shortened or FALLBACK_NAME}{suffix}"
