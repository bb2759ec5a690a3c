"""Content sniffing by magic bytes and filename sanitising."""

from __future__ import annotations

import io
import unicodedata
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.sniff import (
    FALLBACK_NAME,
    Sniffed,
    TextCheck,
    accepts,
    sanitise_filename,
    sniff,
)


def make_zip(*names: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name in names:
            archive.writestr(name, "<xml/>")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "kind", "content_type"),
    [
        (b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj", "pdf", "application/pdf"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "image", "image/png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00", "image", "image/jpeg"),
        (b"GIF89a\x01\x00\x01\x00", "image", "image/gif"),
        (b"RIFF\x24\x00\x00\x00WEBPVP8 ", "image", "image/webp"),
        (
            make_zip("[Content_Types].xml", "_rels/.rels", "word/document.xml"),
            "docx",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        ),
        (make_zip("notes.txt"), "zip", "application/zip"),
        ("Essay: naïve café — ünïcödé\n".encode(), "text", "text/plain; charset=utf-8"),
    ],
)
def test_known_kinds(data: bytes, kind: str, content_type: str) -> None:
    assert sniff(data) == Sniffed(kind, content_type)


@pytest.mark.parametrize(
    "data",
    [
        b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # a Linux executable
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00",  # a Windows executable
        b"plain words then a NUL\x00 byte",
        b"\x7fELF\x02\x01\x01",  # short enough to be valid UTF-8, still not text
        b"\xff\xfe not utf-8 \xc3\x28",
        b"",
    ],
)
def test_unknown_or_binary_is_not_identified(data: bytes) -> None:
    assert sniff(data) is None


def test_extension_is_ignored_content_decides() -> None:
    """Sniffing sees bytes only: an executable named essay.pdf is still not a PDF."""
    assert sniff(b"\x7fELF\x02\x01\x01") is None
    assert sniff(b"%PDF-1.4")  # and a PDF named essay.txt is a PDF


def test_text_cut_mid_character_is_fine_unless_complete() -> None:
    data = "é".encode() * 10
    assert sniff(data[:-1]) is not None
    assert sniff(data[:-1], complete=True) is None


def test_text_check_across_chunks() -> None:
    check = TextCheck()
    encoded = "ünïcödé".encode()
    assert all(check.feed(encoded[i : i + 1]) for i in range(len(encoded)))
    assert check.finish()
    check = TextCheck()
    assert check.feed(b"fine so far")
    assert not check.feed(b"then \x00")
    assert not check.finish()


def test_accepts_by_kind() -> None:
    png = Sniffed("image", "image/png")
    assert accepts(["pdf", "image"], png)
    assert not accepts(["pdf", "text"], png)
    assert accepts([], png)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("essay.pdf", "essay.pdf"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\windows\\system32\\evil.exe", "evil.exe"),
        ("/absolute/path/report.docx", "report.docx"),
        ("bad\x00name\x1b[31m.txt", "badname[31m.txt"),
        ("line\nbreak\r.txt", "line break .txt"),
        ("rtl\u202egpj.exe", "rtlgpj.exe"),
        ("..", FALLBACK_NAME),
        ("", FALLBACK_NAME),
        (None, FALLBACK_NAME),
        ("   .hidden  ", "hidden"),
        ("CON.txt", "_CON.txt"),
        ('what?*:"<>|.pdf', "what_______.pdf"),
        ("Cafe\u0301.txt", "Café.txt"),  # NFC
    ],
)
def test_sanitise_examples(raw: str | None, expected: str) -> None:
    assert sanitise_filename(raw) == expected


def test_long_names_keep_their_extension() -> None:
    name = sanitise_filename("a" * 1000 + ".pdf")
    assert name.endswith(".pdf")
    assert len(name.encode()) == 255
    multibyte = sanitise_filename("ü" * 1000 + ".docx")
    assert multibyte.endswith(".docx") and len(multibyte.encode()) <= 255
    assert multibyte.encode().decode() == multibyte


@given(st.text(max_size=600) | st.from_regex(r"(\.\./|\.\.\\|/)*[^/]{0,300}", fullmatch=True))
def test_sanitised_names_are_always_safe(raw: str) -> None:
    name = sanitise_filename(raw)
    assert name
    assert "/" not in name and "\\" not in name
    assert not any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") for ch in name)
    assert name not in (".", "..")
    assert ".." not in name.split("/")
    assert len(name.encode("utf-8")) <= 255
    assert sanitise_filename(name) == name  # sanitising is idempotent


@given(
    st.text(st.characters(blacklist_characters="/\\."), min_size=1, max_size=300),
    st.sampled_from([".pdf", ".txt", ".docx", ".png"]),
)
def test_extension_survives_shortening(stem: str, extension: str) -> None:
    name = sanitise_filename(stem * 4 + extension)
    assert len(name.encode()) <= 255
    if name not in (FALLBACK_NAME, extension[1:]):  # a stem of only spaces/controls leaves just the extension
        assert name.endswith(extension)
