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
        return Image.fromarray(self._masks([line])[0].astype(np.uint8))

    def _masks(self, lines: list[str]) -> npt.NDArray[np.uint16]:
        """The masks of ``lines`` (printable ASCII only), each padded with blanks to the longest."""
        count, advance = max(len(line) for line in lines), self.advance
        padded = "".join(line.ljust(count) for line in lines).encode("ascii")
        glyphs = self._cells[np.frombuffer(padded, dtype=np.uint8)].reshape(len(lines), count, self.height, -1)
        shape = (len(lines), self.height, (count + self.columns - 1) * advance)
        drawn: npt.NDArray[np.uint16] = np.zeros(shape, dtype=np.uint16)
        # Slice j of every cell lands in one run of columns, shifted j advances right: a pass per slice.
        for j in range(self.columns):
            piece = glyphs[..., j * advance : (j + 1) * advance].transpose(0, 2, 1, 3).reshape(shape[0], shape[1], -1)
            target = drawn[..., j * advance : j * advance + count * advance]
            target += piece - (target * piece + 127) // 255
        return drawn

    def draw_lines(
        self, page: Image.Image, xy: tuple[int, int], lines: list[str], line_height: int, ink: int | tuple[int, ...]
    ) -> None:
        """Draw ``lines`` (printable ASCII only; "" leaves a line's place empty) one ``line_height``
        below the other from ``xy``, as ``draw`` line by line would: in one paste when lines cannot
        overlap, so a page costs a few array passes instead of a few per line."""
        if not any(lines):
            return
        if line_height < self.height:
            for row, line in enumerate(lines):
                self.draw(page, (xy[0], xy[1] + row * line_height), line, ink)
            return
        masks = self._masks(lines)
        block = np.zeros((len(lines), line_height, masks.shape[2]), dtype=np.uint8)
        block[:, : self.height] = masks
        page.paste(ink, (xy[0] - self.left, xy[1]), Image.fromarray(block.reshape(-1, masks.shape[2])))

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
