"""Text drawn from the glyph atlas is, pixel for pixel, the text Pillow draws with the same face."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw, ImageFont

from workers import documents
from workers.glyphs import PRINTABLE_ASCII, GlyphAtlas, whole_pixel_advance


def basic_face(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype("DejaVuSansMono.ttf", size, layout_engine=ImageFont.Layout.BASIC)


def drawn_both_ways(atlas: GlyphAtlas, font: ImageFont.FreeTypeFont, line: str, mode: str = "L") -> tuple:
    ink = (0x22, 0x22, 0x22) if mode == "RGB" else 0x22
    by_pillow = Image.new(mode, (len(line) * atlas.advance + 40, 40), "white")
    ImageDraw.Draw(by_pillow).text((12, 7), line, font=font, fill=ink)
    by_atlas = Image.new(mode, by_pillow.size, "white")
    atlas.draw(by_atlas, (12, 7), line, ink)
    return np.asarray(by_pillow), np.asarray(by_atlas)


@pytest.mark.parametrize("size", [9, 10, 12, 14])
def test_every_pair_of_glyphs_is_drawn_as_pillow_draws_it(size: int) -> None:
    # Neighbouring glyphs overlap at these sizes; where they do, coverage must combine as Pillow's does.
    font = basic_face(size)
    advance = whole_pixel_advance(font)
    assert advance, "DejaVu Sans Mono has whole-pixel advances in basic layout"
    atlas = GlyphAtlas(font, advance)
    lines = [first + second for first in PRINTABLE_ASCII for second in PRINTABLE_ASCII]
    # Pairs side by side in one line, separated by a space so each pair meets only its own partner.
    for start in range(0, len(lines), 50):
        line = " ".join(lines[start : start + 50])
        by_pillow, by_atlas = drawn_both_ways(atlas, font, line)
        assert (by_pillow == by_atlas).all(), line


@settings(max_examples=100, deadline=None)
@given(line=st.text(alphabet=st.sampled_from(PRINTABLE_ASCII), max_size=60), mode=st.sampled_from(["L", "RGB"]))
def test_a_line_is_drawn_as_pillow_draws_it(line: str, mode: str) -> None:
    font = basic_face(10)
    atlas = documents._atlas(10)
    assert atlas is not None
    by_pillow, by_atlas = drawn_both_ways(atlas, font, line, mode)
    assert (by_pillow == by_atlas).all()


@settings(max_examples=60, deadline=None)
@given(
    lines=st.lists(st.text(alphabet=st.sampled_from(PRINTABLE_ASCII), max_size=50), min_size=1, max_size=8),
    line_height=st.sampled_from([8, 13, 16]),
    mode=st.sampled_from(["L", "RGB"]),
)
def test_lines_drawn_together_are_the_lines_pillow_draws_one_by_one(
    lines: list[str], line_height: int, mode: str
) -> None:
    # 13 is the preview's line height; at 8 lines overlap, and are drawn one by one.
    font = basic_face(10)
    atlas = documents._atlas(10)
    assert atlas is not None
    ink = (0x22, 0x22, 0x22) if mode == "RGB" else 0x22
    size = (max(len(line) for line in lines) * atlas.advance + 40, len(lines) * line_height + 40)
    by_pillow = Image.new(mode, size, "white")
    draw = ImageDraw.Draw(by_pillow)
    for row, line in enumerate(lines):
        draw.text((12, 7 + row * line_height), line, font=font, fill=ink)
    by_atlas = Image.new(mode, size, "white")
    atlas.draw_lines(by_atlas, (12, 7), lines, line_height, ink)
    assert (np.asarray(by_pillow) == np.asarray(by_atlas)).all()


def test_a_proportional_face_has_no_atlas() -> None:
    # Pillow's own default face is proportional: its lines are measured and drawn glyph by glyph.
    assert whole_pixel_advance(ImageFont.load_default(size=10)) is None
    # The shaped layout's advances are fractions of a pixel: positions would not be whole either.
    assert whole_pixel_advance(ImageFont.truetype("DejaVuSansMono.ttf", 10)) is None


def test_a_preview_page_mixes_cached_lines_and_shaped_ones() -> None:
    page = documents.render_text("plain ASCII line\n\u0634\u0643\u0631\u0627\nanother plain line")
    inked = np.asarray(page) < 128
    rows = np.flatnonzero(inked.any(axis=1))
    # Three lines drawn, one per line height, the Arabic one too.
    assert {int(row - documents.PAGE_MARGIN) // 13 for row in rows} == {0, 1, 2}
