"""Turning a submitted file into a small preview picture (no I/O beyond the file itself).

Every renderer runs in a worker thread: decoding is CPU-bound. Untrusted input
is the norm here, so each one bounds its work: images are measured from their
header before any pixel is decoded, PDFs are rendered at thumbnail scale, text
and DOCX are read only as far as a preview needs.

Text extraction for the similarity check lives in core/similarity/; this
module only draws.
"""

from __future__ import annotations

import io
import re
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageColor, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError

from core.similarity import text
from workers.glyphs import GlyphAtlas, shared_advance, whole_pixel_advance

THUMB_WIDTH = 320
THUMB_MAX_HEIGHT = 480
# Text, DOCX and icon previews are drawn as a page with A4's proportions.
PAGE_SIZE = (THUMB_WIDTH, 452)
PAGE_MARGIN = 12
# zlib level 3, not Pillow's 6: a text preview's PNG costs 2.3 ms instead of 3.5 ms to write,
# for 10 KB instead of 8 KB; a preview is written once per submission and read a few times.
PNG_COMPRESS_LEVEL = 3
# A grey page's 256 levels to 16 (in_greys), and those 16 from black to white.
_TO_GREY_LEVEL = [round(value * 15 / 255) for value in range(256)]
_GREY_PALETTE = [round(level * 255 / 15) for level in range(16) for _ in range(3)]
# Refuse to decode images above this many pixels (a 40 MP photo still passes).
MAX_SOURCE_PIXELS = 50_000_000
# Pillow's own guard as a backstop: it errors above twice this.
Image.MAX_IMAGE_PIXELS = MAX_SOURCE_PIXELS
# Enough text for a page of preview, however long the file.
TEXT_PREFIX_BYTES = 64 * 1024
MAX_DOCX_XML_BYTES = 20 * 1024 * 1024
MAX_DOCX_PARAGRAPHS = 80
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# PDFium is not thread-safe: one render at a time per process.
_PDFIUM_LOCK = threading.Lock()


class DocumentError(Exception):
    """The file cannot be previewed: corrupt, encrypted or too large. Retrying will not help."""


@dataclass(frozen=True)
class Thumbnail:
    png: bytes
    width: int
    height: int
    # What was drawn: "image", "pdf", "text", "docx" or "icon" (a generic picture, not the content).
    source: str
    note: str | None = None


_FONTS = threading.local()


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Loaded once per rendering thread and size, not once per thumbnail (a FreeType face is not shared)."""
    fonts: dict[int, ImageFont.FreeTypeFont | ImageFont.ImageFont] = _FONTS.__dict__.setdefault("by_size", {})
    if size not in fonts:
        try:
            fonts[size] = ImageFont.truetype("DejaVuSansMono.ttf", size)
        except OSError:
            fonts[size] = ImageFont.load_default(size=size)
    return fonts[size]


def _atlas(size: int) -> GlyphAtlas | None:
    """The glyphs of the monospaced face at ``size``, rasterised once per rendering thread; None
    without that face (a line is then drawn by Pillow, glyph by glyph)."""
    atlases: dict[int, GlyphAtlas | None] = _FONTS.__dict__.setdefault("atlas_by_size", {})
    if size not in atlases:
        atlases[size] = None
        try:
            # Basic layout: hinted whole-pixel advances, so glyph i of a line sits at i advances.
            font = ImageFont.truetype("DejaVuSansMono.ttf", size, layout_engine=ImageFont.Layout.BASIC)
        except OSError:
            return None
        if advance := whole_pixel_advance(font):
            atlases[size] = GlyphAtlas(font, advance)
    return atlases[size]


# Per font object, weakly: a rendering thread's fonts go with it, and an id could then be reused.
_PITCH: weakref.WeakKeyDictionary[ImageFont.FreeTypeFont | ImageFont.ImageFont, float | None] = (
    weakref.WeakKeyDictionary()
)


def _fixed_pitch(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float | None:
    """``font``'s shared advance (workers.glyphs.shared_advance), measured once per font: with one, a
    plain ASCII line is cut by counting characters, with no layout to measure it."""
    if font not in _PITCH:
        _PITCH[font] = shared_advance(font)
    return _PITCH[font]


def fit(image: Image.Image) -> Image.Image:
    """Shrink (never enlarge) to at most 320 px wide and 480 px tall, keeping proportions."""
    image.thumbnail((THUMB_WIDTH, THUMB_MAX_HEIGHT), Image.Resampling.LANCZOS)
    return image


def render_image(path: Path) -> Image.Image:
    try:
        with Image.open(path) as image:
            width, height = image.size
            if width * height > MAX_SOURCE_PIXELS:
                raise DocumentError(f"image is {width}x{height} pixels, too large to preview")
            # JPEG can decode at 1/2, 1/4, 1/8 scale: much less work for a big photo.
            image.draft("RGB", (THUMB_WIDTH * 2, THUMB_MAX_HEIGHT * 2))
            upright = ImageOps.exif_transpose(image)  # also decodes the (first) frame
            has_alpha = upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info
            return upright.convert("RGBA" if has_alpha else "RGB")
    except DocumentError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise DocumentError(f"image too large to preview: {error}") from error
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as error:
        raise DocumentError(f"not a readable image: {error}") from error


def render_pdf(path: Path) -> Image.Image:
    import pypdfium2 as pdfium  # only this worker pays for loading PDFium

    with _PDFIUM_LOCK:
        try:
            document = pdfium.PdfDocument(str(path))
        except pdfium.PdfiumError as error:
            raise DocumentError(f"not a readable PDF: {error}") from error
        try:
            if len(document) == 0:
                raise DocumentError("the PDF has no pages")
            page = document[0]
            try:
                width, height = page.get_size()
                if width <= 0 or height <= 0:
                    raise DocumentError("the PDF's first page has no size")
                # Render straight at thumbnail scale: a poster-sized page costs no more than a letter.
                scale = min(THUMB_WIDTH / width, THUMB_MAX_HEIGHT / height)
                bitmap = page.render(scale=scale)
                rendered: Image.Image = bitmap.to_pil().convert("RGB")
                return rendered
            finally:
                page.close()
        except pdfium.PdfiumError as error:
            raise DocumentError(f"cannot render the PDF's first page: {error}") from error
        finally:
            document.close()


def decode_text(data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


def _wrap(line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int, limit: int) -> list[str]:
    """Break a line where it would run past the page edge; at most `limit` pieces."""
    pitch = _fixed_pitch(font)
    if pitch and line.isascii() and line.isprintable():
        # Monospaced and plain ASCII (most of what students hand in): cut by counting characters.
        per_line = max(1, int(width // pitch))

        def overrun(rest: str) -> int | None:
            return per_line if len(rest) > per_line else None

    else:

        def overrun(rest: str) -> int | None:
            return _measured_overrun(rest, font, width)

    pieces: list[str] = []
    while line and len(pieces) < limit and (cut := overrun(line)) is not None:
        space = line.rfind(" ", 0, cut)
        if space > cut // 2:  # prose reads better broken between words
            cut = space + 1
        pieces.append(line[:cut].rstrip())
        line = line[cut:]
    pieces.append(line)
    return pieces


def _measured_overrun(line: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont, width: int) -> int | None:
    """How much of ``line`` fits in ``width``, measured; None if all of it does.

    Only a head of the line is measured (no glyph is under half a pixel wide):
    measuring the whole rest of a 64 KB one-line file per piece took 40 s.
    """
    head = line[: 2 * width]
    head_width = font.getlength(head)
    if head_width <= width:
        return None
    cut = max(1, int(len(head) * width / head_width))
    while cut > 1 and font.getlength(line[:cut]) > width:
        cut -= 1
    return cut


def render_text(text: str, *, title: str | None = None) -> Image.Image:
    """The first lines of `text` drawn on a white page (grey levels only unless there is a coloured title)."""
    page = Image.new("RGB" if title else "L", PAGE_SIZE, "white")
    draw = ImageDraw.Draw(page)
    font, line_height = _font(10), 13
    inner = PAGE_SIZE[0] - 2 * PAGE_MARGIN
    y = PAGE_MARGIN
    if title:
        draw.text((PAGE_MARGIN, y), title[:40], font=_font(12), fill="#1f4e79")
        y += 20
    room = (PAGE_SIZE[1] - PAGE_MARGIN - y) // line_height
    lines: list[str] = []
    for raw in text.splitlines():
        lines.extend(_wrap(_CONTROL_CHARS.sub("", raw.expandtabs(4)).rstrip(), font, inner, room - len(lines)))
        if len(lines) >= room:
            break
    if not any(line.strip() for line in lines):
        lines = ["(no text)"]
    atlas, ink = _atlas(10), ImageColor.getcolor("#222222", page.mode)
    # Lines the atlas has every glyph of, drawn together; "" keeps the place of one drawn by Pillow.
    cached = [line if atlas and line.isascii() and line.isprintable() else "" for line in lines[:room]]
    for row, (line, plain) in enumerate(zip(lines[:room], cached, strict=True)):
        if line and not plain:  # other scripts need shaping (and this face may not have their glyphs)
            draw.text((PAGE_MARGIN, y + row * line_height), line, font=font, fill=ink)
    if atlas:
        atlas.draw_lines(page, (PAGE_MARGIN, y), cached, line_height, ink)
    return page


def docx_paragraphs(path: Path) -> list[str]:
    """The text of a DOCX's first paragraphs (the same bounded, DTD-refusing reader similarity uses)."""
    try:
        return text.docx_paragraphs(path, MAX_DOCX_XML_BYTES, max_paragraphs=MAX_DOCX_PARAGRAPHS)
    except text.UnreadableDocument as error:
        # Already says "this document could not be read: <why>", fit for the student.
        raise DocumentError(str(error)) from error


def render_icon(filename: str) -> Image.Image:
    """A generic document picture labelled with the file's extension."""
    page = Image.new("RGB", PAGE_SIZE, "#f3f4f6")
    draw = ImageDraw.Draw(page)
    width, height = PAGE_SIZE
    fold = 60
    outline = [(40, 40), (width - 40 - fold, 40), (width - 40, 40 + fold), (width - 40, height - 40), (40, height - 40)]
    draw.polygon(outline, fill="white", outline="#6b7280", width=3)
    corner = [(width - 40 - fold, 40), (width - 40 - fold, 40 + fold), (width - 40, 40 + fold)]
    draw.line(corner, fill="#6b7280", width=3)
    extension = Path(filename).suffix.lstrip(".").upper()[:6] or "FILE"
    font = _font(44)
    text_width = draw.textlength(extension, font=font)
    draw.text(((width - text_width) / 2, height / 2 - 26), extension, font=font, fill="#374151")
    return page


def in_greys(image: Image.Image) -> Image.Image:
    """A grey page in 16 levels, as a 4-bit palette: a text preview's antialiased glyphs look the same at
    320 px, and its PNG is a third smaller and takes a third less CPU to compress (Pillow filters a grey
    image's rows, not a palette's)."""
    levels = Image.frombytes("P", image.size, image.point(_TO_GREY_LEVEL).tobytes())
    levels.putpalette(_GREY_PALETTE)
    return levels


def render_thumbnail(kind: str, filename: str, path: Path) -> Thumbnail:
    """The preview of one stored file, as PNG bytes no wider than 320 px."""
    note: str | None = None
    if kind == "image":
        source, image = "image", render_image(path)
    elif kind == "pdf":
        source, image = "pdf", render_pdf(path)
    elif kind == "text":
        with open(path, "rb") as handle:
            source, image = "text", render_text(decode_text(handle.read(TEXT_PREFIX_BYTES)))
    elif kind == "docx":
        paragraphs = [p for p in docx_paragraphs(path) if p.strip()]
        if paragraphs:
            source, image = "docx", render_text("\n".join(paragraphs), title=filename)
        else:
            source, image, note = "icon", render_icon(filename), "the document has no text to preview"
    else:
        source, image, note = "icon", render_icon(filename), f"no preview for {kind!r} files"
    image = fit(image)
    buffer = io.BytesIO()
    if image.mode == "L":
        in_greys(image).save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL, bits=4)
    else:
        image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return Thumbnail(buffer.getvalue(), image.width, image.height, source, note)
