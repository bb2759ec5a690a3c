"""Text extraction for the similarity check: real PDF, DOCX and text files on disk."""

from __future__ import annotations

import io
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import pytest
from arq.connections import ArqRedis

from core.settings import Settings
from core.similarity.text import UnreadableDocument, decode_text, extract_text
from tests.fixtures.factories import Factory
from tests.integration.test_similarity_builtin import essay, queued_similarity_step, run, similarity_row

W_NS = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"


def pdf_with_text(text: str) -> bytes:
    """A one-page PDF whose content stream shows ``text`` in Helvetica, wrapped into lines."""
    lines = [line for paragraph in text.splitlines() for line in textwrap.wrap(paragraph, 90) or [""]]
    escaped = [line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)") for line in lines]
    stream = "BT /F1 8 Tf 20 780 Td 9 TL " + " ".join(f"({line}) Tj T*" for line in escaped) + " ET"
    objects = [
        "<< /Type /Catalog /Pages 2 0 R >>",
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 5000] /Contents 4 0 R "
        "/Resources << /Font << /F1 5 0 R >> >> >>",
        f"<< /Length {len(stream.encode('latin-1'))} >>\nstream\n{stream}\nendstream",
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(f"{number} 0 obj\n{body}\nendobj\n".encode("latin-1"))
    xref = out.tell()
    out.write(f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode())
    for offset in offsets:
        out.write(f"{offset:010d} 00000 n \n".encode())
    out.write(f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode())
    return out.getvalue()


def docx_with_paragraphs(paragraphs: list[str], *, tab: bool = False) -> bytes:
    """A minimal Word document; each paragraph split over two runs (with a tab between, if asked)."""
    between = "<w:tab/>" if tab else ""
    body = "".join(
        f'<w:p><w:r><w:t xml:space="preserve">{p[: len(p) // 2]}</w:t>{between}</w:r>'
        f"<w:r><w:t>{p[len(p) // 2 :]}</w:t></w:r></w:p>"
        for p in paragraphs
    )
    document = f'<?xml version="1.0"?><w:document xmlns:w="{W_NS}"><w:body>{body}</w:body></w:document>'
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", document)
    return out.getvalue()


def test_plain_text_in_several_encodings(tmp_path: Path) -> None:
    text = "Naïve café — “quoted” Straße"
    for encoding in ("utf-8", "utf-8-sig", "utf-16", "cp1252"):
        data = text.encode(encoding)
        assert decode_text(data) == text, encoding
    path = tmp_path / "essay.txt"
    path.write_bytes(text.encode("utf-16"))
    assert extract_text(path, "text") == text


def test_pdf_text_is_extracted(tmp_path: Path) -> None:
    text = essay(10, 1500)
    path = tmp_path / "essay.pdf"
    path.write_bytes(pdf_with_text(text))
    extracted = extract_text(path, "pdf")
    assert extracted is not None
    assert extracted.split() == text.split()


def test_docx_paragraphs_and_runs_are_extracted(tmp_path: Path) -> None:
    paragraphs = ["The first paragraph of the essay.", "A second one &amp; more."]
    path = tmp_path / "essay.docx"
    path.write_bytes(docx_with_paragraphs(paragraphs, tab=True))
    extracted = extract_text(path, "docx")
    assert extracted is not None
    lines = extracted.split("\n")
    assert lines == ["The first paragr\taph of the essay.", "A second one\t & more."]


def test_images_and_blank_files_have_no_text(tmp_path: Path) -> None:
    path = tmp_path / "blank.txt"
    path.write_bytes(b"  \n\t ")
    assert extract_text(path, "text") is None
    assert extract_text(path, "image") is None


def test_broken_documents_are_reported_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "broken"
    path.write_bytes(b"%PDF-1.4 this is not really a PDF")
    with pytest.raises(UnreadableDocument):
        extract_text(path, "pdf")
    with pytest.raises(UnreadableDocument):
        extract_text(path, "docx")


async def test_a_pdf_copying_from_a_docx_is_caught(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    world = await factory.world()
    source = essay(20, 5000)
    paragraphs = source.split("\n")
    docx = docx_with_paragraphs(paragraphs)
    first = await queued_similarity_step(
        factory,
        arq_redis,
        world,
        docx,
        user=world.student,
        filename="mine.docx",
        kind="docx",
        content_type="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    )
    await run(run_burst, settings)
    copied = "\n".join(paragraphs[: len(paragraphs) // 2])
    pdf = pdf_with_text(copied + "\n" + essay(21, 2500))
    second = await queued_similarity_step(
        factory,
        arq_redis,
        world,
        pdf,
        user=world.other_student,
        filename="theirs.pdf",
        kind="pdf",
        content_type="application/pdf",
    )
    await run(run_burst, settings)

    row = await similarity_row(sessions, second.id)
    assert row.state == "succeeded"
    assert 40 <= row.result["score"] <= 60
    assert row.result["matches"][0]["submission_id"] == first.id
