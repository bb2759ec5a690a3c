"""Text to compare, extracted from a submitted file: plain text, PDF or DOCX.

Images (and anything else without text) give ``None``: the similarity step is
then skipped with "no text to compare", never scored 0. Extraction is CPU and
file work: call ``extract_text`` through ``asyncio.to_thread``.

pypdfium2 is imported only when a PDF is read, so importing this package
(the api does, for the webhook) costs nothing.
"""

from __future__ import annotations

import codecs
import contextlib
from pathlib import Path

from core import safe_docs
from core.safe_docs import UnreadableDocument

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

__all__ = ["TEXT_KINDS", "UnreadableDocument", "decode_text", "docx_paragraphs", "extract_text", "pdf_text"]


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


def docx_paragraphs(
    path: Path, max_xml_bytes: int = MAX_DOCX_XML_BYTES, max_paragraphs: int | None = None
) -> list[str]:
    """Paragraphs of word/document.xml, each the concatenation of its w:t runs.

    Shared by similarity (all of them, up to ``MAX_TEXT_CHARS``) and the
    thumbnail (the first few). Read through core.safe_docs: bounded inflation,
    no DTD, a streamed parse. A paragraph nested in another (a text box) comes
    before the one holding it.
    """
    paragraphs: list[str] = []
    open_paragraphs: list[list[str]] = []
    chars = 0
    with (
        safe_docs.zip_member(path, "word/document.xml", max_xml_bytes) as part,
        contextlib.closing(safe_docs.xml_events(part)) as events,
    ):
        for event, node in events:
            if node.tag == f"{_W}p":
                if event == "start":
                    open_paragraphs.append([])
                    continue
                paragraph = "".join(open_paragraphs.pop())
                paragraphs.append(paragraph)
                chars += len(paragraph) + 1
                if chars >= MAX_TEXT_CHARS or (max_paragraphs is not None and len(paragraphs) >= max_paragraphs):
                    break
            elif event == "end" and open_paragraphs:
                if node.tag == f"{_W}t" and node.text:
                    open_paragraphs[-1].append(node.text)
                elif node.tag == f"{_W}tab":
                    open_paragraphs[-1].append("\t")
                elif node.tag in (f"{_W}br", f"{_W}cr"):
                    open_paragraphs[-1].append("\n")
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
