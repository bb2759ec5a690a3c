"""Text previews: plain ASCII lines cut by counting characters break exactly where measuring them would."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from workers import documents

PAGE_TEXT_WIDTH = documents.PAGE_SIZE[0] - 2 * documents.PAGE_MARGIN
ASCII_LINES = st.text(
    alphabet=st.sampled_from([*"abcdefghij klmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?()-'\"/ "]),
    max_size=400,
)


def measured(line: str, limit: int, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    font = documents._font(10)
    with monkeypatch.context() as patch:
        patch.setitem(documents._PITCH, font, None)  # as for a proportional face: every cut measured
        return documents._wrap(line, font, PAGE_TEXT_WIDTH, limit)


def test_the_preview_face_is_monospaced_for_ascii() -> None:
    assert documents._fixed_pitch(documents._font(10)), "DejaVu Sans Mono expected (fonts-dejavu-core)"


@settings(max_examples=200, deadline=None)
@given(line=ASCII_LINES, limit=st.integers(1, 40))
def test_counted_cuts_are_the_measured_cuts(line: str, limit: int) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        expected = measured(line, limit, monkeypatch)
    assert documents._wrap(line, documents._font(10), PAGE_TEXT_WIDTH, limit) == expected


def test_lines_with_other_characters_are_still_measured() -> None:
    # Wide characters take two columns in the face's fallback: counting would overrun the page.
    line = "漢字" * 100
    pieces = documents._wrap(line, documents._font(10), PAGE_TEXT_WIDTH, 40)
    font = documents._font(10)
    assert all(font.getlength(piece) <= PAGE_TEXT_WIDTH for piece in pieces)


def test_a_text_file_preview_is_a_grey_page_with_its_first_lines(tmp_path: Path) -> None:
    path = tmp_path / "essay.txt"
    path.write_text("\n".join(f"line {n} of the essay, long enough to be wrapped " * 2 for n in range(200)))
    thumbnail = documents.render_thumbnail("text", "essay.txt", path)
    image = Image.open(io.BytesIO(thumbnail.png))
    assert (image.mode, image.size) == ("P", documents.PAGE_SIZE)
    # Sixteen greys from black to white, four bits a pixel: what a text page needs, a smaller PNG.
    assert image.getpalette()[:48:3] == [round(level * 255 / 15) for level in range(16)]
    assert thumbnail.png[24] == 4  # the bit depth in the PNG's header
    image = image.convert("L")
    inked_rows = [y for y in range(image.height) if image.crop((0, y, image.width, y + 1)).getextrema()[0] < 128]
    # Lines drawn from the top margin down to near the bottom: a page full of text, not one line.
    assert inked_rows[0] < 30 and inked_rows[-1] > image.height - 40
