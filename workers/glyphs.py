"""Lines of plain ASCII text drawn from glyphs rasterised once per font.

Pillow has FreeType hint and rasterise every glyph of every line it draws:
about 13 µs a glyph, 15 ms for a page of preview text, most of what a text
thumbnail cost. In a monospaced face whose hinted advance is a whole number
of pixels (DejaVu Sans Mono with Pillow's basic layout), glyph i of a line
sits at i advances with no kerning, so a line's mask is its glyphs' masks
side by side, combined where they overlap as Pillow combines them (one
coverage over the other, rounded as Pillow rounds). The masks are the ones
Pillow draws for each character alone, so a line comes out pixel for pixel
as Pillow would draw it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFont

PRINTABLE_ASCII = "".join(chr(code) for code in range(32, 127))


class GlyphAtlas:
    """Every printable ASCII glyph of one font, as a mask in a cell of ``columns`` advances wide."""

    def __init__(self, font: ImageFont.FreeTypeFont, advance: int) -> None:
        boxes = [font.getbbox(char) for char in PRINTABLE_ASCII]
        # Room left of the pen for glyphs that reach back, and right for those that overhang.
        self.left = max(0, -min(int(box[0]) for box in boxes))
        reach = self.left + max(int(np.ceil(box[2])) for box in boxes)
        self.advance = advance
        self.columns = max(1, -(-reach // advance))
        self.height = max(int(np.ceil(box[3])) for box in boxes)
        # Wide enough to hold a product of two coverages while they are combined.
        cells = np.zeros((128, self.height, self.columns * advance), dtype=np.uint16)
        for char in PRINTABLE_ASCII:
            cell = Image.new("L", (self.columns * advance, self.height), 0)
            ImageDraw.Draw(cell).text((self.left, 0), char, font=font, fill=255)
            cells[ord(char)] = np.asarray(cell)
        self._cells = cells

    def mask(self, line: str) -> Image.Image:
        """The mask of ``line`` (printable ASCII only), its pen starting ``self.left`` pixels in."""
        codes = np.frombuffer(line.encode("ascii"), dtype=np.uint8)
        glyphs = self._cells[codes]  # (characters, height, cell width)
        count, advance = len(codes), self.advance
        drawn: npt.NDArray[np.uint16] = np.zeros((self.height, (count + self.columns - 1) * advance), dtype=np.uint16)
        # Slice j of every cell lands in one run of columns, shifted j advances right: a pass per slice.
        for j in range(self.columns):
            piece = glyphs[:, :, j * advance : (j + 1) * advance].transpose(1, 0, 2).reshape(self.height, -1)
            target = drawn[:, j * advance : j * advance + count * advance]
            target += piece - (target * piece + 127) // 255
        return Image.fromarray(drawn.astype(np.uint8))

    def draw(self, page: Image.Image, xy: tuple[int, int], line: str, ink: int | tuple[int, ...]) -> None:
        """Draw ``line`` on ``page`` with its pen at ``xy``, as ``ImageDraw.text`` would."""
        if line:
            page.paste(ink, (xy[0] - self.left, xy[1]), self.mask(line))


def shared_advance(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> float | None:
    """The one advance every printable ASCII glyph of ``font`` has, if it has one (a monospaced face)
    and nothing comes between glyphs (no kerning): a run of them is as wide as its length times that."""
    advances = {font.getlength(char) for char in PRINTABLE_ASCII}
    if len(advances) != 1:
        return None
    advance = advances.pop()
    return advance if font.getlength(PRINTABLE_ASCII) == advance * len(PRINTABLE_ASCII) else None


def whole_pixel_advance(font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> int | None:
    """``shared_advance`` when it is a whole number of pixels (at least one)."""
    advance = shared_advance(font)
    if advance is None or advance != int(advance) or advance < 1:
        return None
    return int(advance)
