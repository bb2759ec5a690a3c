"""The thumbnail step on real files: a PNG, a one-page PDF, text, DOCX, and broken ones."""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

import pytest
from arq.connections import ArqRedis
from PIL import Image, ImageDraw, ImageFont
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from core.models import Submission, SubmissionStep
from core.settings import Settings
from core.storage import Area, make_storage
from tests.fixtures.factories import Factory
from tests.fixtures.s3 import S3_CREDENTIALS
from workers import base, thumbnail


def png_picture() -> bytes:
    image = Image.new("RGB", (800, 600), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((50, 50, 400, 300), fill="#c0392b")
    draw.ellipse((420, 200, 760, 560), fill="#2e86c1")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def one_page_pdf() -> bytes:
    """A US-letter page (612 x 792 pt at 72 dpi) with a heading, text lines and a box."""
    page = Image.new("RGB", (612, 792), "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=28)
    draw.text((60, 60), "Essay on queues", font=font, fill="black")
    for line in range(20):
        draw.text((60, 130 + line * 28), "Work arrives faster than it can be served." * 1, font=font, fill="black")
    draw.rectangle((60, 700, 550, 760), outline="black", width=6)
    buffer = io.BytesIO()
    page.save(buffer, format="PDF", resolution=72.0)
    return buffer.getvalue()


def docx_document(paragraphs: list[str]) -> bytes:
    namespace = "http://schemas.openxmlformats.org/wordprocessingml/2006/main"
    body = "".join(f"<w:p><w:r><w:t>{text}</w:t></w:r></w:p>" for text in paragraphs)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        document = f'<w:document xmlns:w="{namespace}"><w:body>{body}</w:body></w:document>'
        archive.writestr("word/document.xml", '<?xml version="1.0" encoding="UTF-8"?>' + document)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims an enormous picture: a decompression bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


async def queued_thumbnail_step(factory: Factory, arq_redis: ArqRedis, content: bytes, **file: str) -> Submission:
    """A submission as the store step leaves it, with its thumbnail job on the queue."""
    world = await factory.world()
    return await factory.stored_submission(world, content, step=thumbnail.TASK, arq_redis=arq_redis, **file)


async def finished(sessions: async_sessionmaker[AsyncSession], submission_id: int) -> tuple[SubmissionStep, Submission]:
    async with sessions() as session:
        row = await session.scalar(
            select(SubmissionStep).where(
                SubmissionStep.submission_id == submission_id, SubmissionStep.step == thumbnail.TASK
            )
        )
        submission = await session.get(Submission, submission_id)
    assert row is not None and submission is not None
    return row, submission


async def stored_thumbnail(settings: Settings, submission: Submission) -> Image.Image:
    storage = make_storage(settings)
    assert submission.thumbnail_key == f"{submission.storage_key}.png"
    data = b"".join([chunk async for chunk in storage.open(Area.thumbnails, submission.thumbnail_key)])
    await storage.close()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def assert_not_blank(image: Image.Image) -> None:
    grey = image.convert("L")
    histogram = grey.histogram()
    dark = sum(histogram[:160])
    assert dark > 0.005 * grey.width * grey.height, "thumbnail is (nearly) blank"
    low, high = grey.getextrema()
    assert high - low > 100


PNG_FILE = {"filename": "diagram.png", "kind": "image", "content_type": "image/png"}
PDF_FILE = {"filename": "essay.pdf", "kind": "pdf", "content_type": "application/pdf"}
# kind → (content, file fields, expected thumbnail size, expected result "source")
KINDS = {
    "png": (png_picture, PNG_FILE, (320, 240), "image"),
    "pdf": (one_page_pdf, PDF_FILE, (320, 414), "pdf"),
    "text": (
        lambda: "\n".join(f"{n:3d}  def serve(queue):  # line {n}" for n in range(1, 200)).encode(),
        {"filename": "solution.py", "kind": "text", "content_type": "text/plain"},
        (320, 452),
        "text",
    ),
    "docx": (
        lambda: docx_document(["Essay on queues", "Work arrives faster than it can be served. " * 5, "Conclusion."]),
        {
            "filename": "essay.docx",
            "kind": "docx",
            "content_type": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
        },
        (320, 452),
        "docx",
    ),
}


@pytest.mark.parametrize("kind", list(KINDS))
async def test_thumbnail_of_each_kind(
    kind: str, factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    make, file, size, source = KINDS[kind]
    submission = await queued_thumbnail_step(factory, arq_redis, make(), **file)

    await run_burst(thumbnail.TASK, thumbnail.handle)

    row, stored = await finished(sessions, submission.id)
    assert row.state == "succeeded", row.error
    image = await stored_thumbnail(settings, stored)
    width, height = image.size
    assert width == size[0] and abs(height - size[1]) <= 1
    assert row.result == {"width": width, "height": height, "key": stored.thumbnail_key, "source": source}
    assert_not_blank(image)


async def test_an_unknown_kind_gets_an_honest_icon(
    factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    submission = await queued_thumbnail_step(
        factory,
        arq_redis,
        b"PK\x03\x04 not really",
        filename="data.zip",
        kind="archive",
        content_type="application/zip",
    )

    await run_burst(thumbnail.TASK, thumbnail.handle)

    row, stored = await finished(sessions, submission.id)
    assert row.state == "succeeded"
    assert row.result["source"] == "icon" and row.result["note"] == "no preview for 'archive' files"
    assert_not_blank(await stored_thumbnail(settings, stored))


BROKEN = {
    "corrupt png": (
        b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 50,
        {"filename": "broken.png", "kind": "image", "content_type": "image/png"},
        "not a readable image",
    ),
    "corrupt pdf": (
        b"%PDF-1.4\n1 0 obj <<>> garbage without xref\n",
        {"filename": "broken.pdf", "kind": "pdf", "content_type": "application/pdf"},
        "not a readable PDF",
    ),
    "decompression bomb": (
        png_claiming(60_000, 60_000),
        {"filename": "bomb.png", "kind": "image", "content_type": "image/png"},
        "too large to preview",
    ),
}


@pytest.mark.parametrize("case", list(BROKEN))
async def test_a_broken_file_fails_once_with_the_reason(
    case: str, factory: Factory, sessions: Any, settings: Settings, arq_redis: ArqRedis, run_burst: Any
) -> None:
    content, file, reason = BROKEN[case]
    submission = await queued_thumbnail_step(factory, arq_redis, content, **file)

    await run_burst(thumbnail.TASK, thumbnail.handle)

    row, stored = await finished(sessions, submission.id)
    assert row.state == "failed" and row.attempts == 1  # not retried: it would fail the same way
    assert reason in (row.error or "")
    assert stored.thumbnail_key is None


async def test_thumbnail_from_an_s3_store(
    factory: Factory,
    sessions: Any,
    settings: Settings,
    arq_redis: ArqRedis,
    run_burst: Any,
    s3_endpoint: str,
    s3_bucket: str,
    request: pytest.FixtureRequest,
) -> None:
    """With S3 there is no local file: the worker downloads to a temporary file first."""
    if request.node.callspec.params["database_url"] != "sqlite":
        pytest.skip("the storage backend does not depend on the database")
    settings.storage.backend = "s3"
    settings.storage.s3_bucket = s3_bucket
    settings.storage.s3_endpoint_url = s3_endpoint
    settings.storage.s3_access_key_id = S3_CREDENTIALS["aws_access_key_id"]
    settings.storage.s3_secret_access_key = S3_CREDENTIALS["aws_secret_access_key"]
    submission = await queued_thumbnail_step(
        factory, arq_redis, png_picture(), filename="a.png", kind="image", content_type="image/png"
    )

    async def shutdown_closing_storage(ctx: dict[str, Any]) -> None:
        # workers.base.shutdown leaves the S3 client open; close it so the test ends clean.
        await base.shutdown(ctx)
        await ctx["storage"].close()

    await run_burst(thumbnail.TASK, thumbnail.handle, on_shutdown=shutdown_closing_storage)

    row, stored = await finished(sessions, submission.id)
    assert row.state == "succeeded", row.error
    assert (await stored_thumbnail(settings, stored)).size == (320, 240)
