"""Text to compare, extracted from a submitted file: plain text, PDF or DOCX.

Images (and anything else without text) give ``None``: the similarity step is
then skipped with "no text to compare", never scored 0. Extraction is CPU and
file work: call ``extract_text`` through ``asyncio.to_thread``.

pypdfium2 is imported only when a PDF is read, so importing this package
(the api does, for the webhook) costs nothing.
"""

from __future__ import annotations

import codecs
import zipfile
from pathlib import Path
from xml.etree import ElementTree

# A bound on what one check reads, so a hostile or huge file cannot stall a worker.
MAX_TEXT_CHARS = 2_000_000
MAX_DOCX_XML_BYTES = 64 * 1024 * 1024

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)
TEXT_KINDS = ("text", "pdf", "docx")


class UnreadableDocument(Exception):
    """The file claims a kind whose text cannot be read (corrupt PDF, broken DOCX)."""


def decode_text(data: bytes) -> str:
    """Bytes of a plain-text file as text.

    A byte-order mark decides first; then strict UTF-8 (most student files);
    then Windows-1252, the usual encoding of older Western editors; Latin-1
    last, which decodes anything, so a check never fails on encoding alone.
    """
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            return data[len(bom) :].decode(encoding, errors="replace")
    try:
        # Not final: a file cut at the read limit may end inside a character.
        return codecs.getincrementaldecoder("utf-8")().decode(data, final=False)
    except UnicodeDecodeError:
        pass
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def pdf_text(path: Path) -> str:
    import pypdfium2

    try:
        document = pypdfium2.PdfDocument(path)
    except pypdfium2.PdfiumError as error:
        raise UnreadableDocument(f"cannot read the PDF: {error}") from error
    pages: list[str] = []
    size = 0
    try:
        for index in range(len(document)):
            page = document[index]
            textpage = page.get_textpage()
            try:
                text = textpage.get_text_range()
            finally:
                textpage.close()
                page.close()
            pages.append(text)
            size += len(text)
            if size >= MAX_TEXT_CHARS:
                break
    finally:
        document.close()
    return "\n".join(pages)


def docx_paragraphs(path: Path, max_xml_bytes: int = MAX_DOCX_XML_BYTES) -> list[str]:
    """Paragraphs of word/document.xml, each the concatenation of its w:t runs.

    Shared by similarity (all of them) and the thumbnail (the first few).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            info = archive.getinfo("word/document.xml")
            if info.file_size > max_xml_bytes:
                raise UnreadableDocument("the document body is too large to read")
            with archive.open(info) as part:
                xml = part.read(max_xml_bytes + 1)
    except (zipfile.BadZipFile, KeyError, OSError, EOFError) as error:
        raise UnreadableDocument(f"not a readable DOCX file: {error}") from error
    if b"<!DOCTYPE" in xml.upper():
        # Word never writes a DTD; refusing one rules out entity-expansion tricks.
        raise UnreadableDocument("the document body declares a DTD; refused")
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as error:
        raise UnreadableDocument(f"broken DOCX document body: {error}") from error
    paragraphs: list[str] = []
    for paragraph in root.iter(f"{_W}p"):
        parts: list[str] = []
        for node in paragraph.iter():
            if node.tag == f"{_W}t" and node.text:
                parts.append(node.text)
            elif node.tag == f"{_W}tab":
                parts.append("\t")
            elif node.tag in (f"{_W}br", f"{_W}cr"):
                parts.append("\n")
        paragraphs.append("".join(parts))
    return paragraphs


def docx_text(path: Path) -> str:
    return "\n".join(docx_paragraphs(path))


def extract_text(path: Path, kind: str) -> str | None:
    """The text of the file at ``path`` of the given sniffed kind; None when it has none."""
    if kind == "text":
        with open(path, "rb") as handle:
            # Up to 4 bytes per character: read enough for the cap, never the whole of a huge file.
            text = decode_text(handle.read(MAX_TEXT_CHARS * 4))
    elif kind == "pdf":
        text = pdf_text(path)
    elif kind == "docx":
        text = docx_text(path)
    else:
        return None
    text = text[:MAX_TEXT_CHARS]
    return text if text.strip() else None
