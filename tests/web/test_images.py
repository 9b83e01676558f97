from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from digit_predictor.web import images
from tests.web.drawings import BLANK, ONE, SEVEN, canvas_png


def _decode(png: bytes) -> Image.Image:
    return Image.open(io.BytesIO(png))


def test_an_empty_canvas_is_blank() -> None:
    assert images.is_blank(canvas_png(BLANK))
    assert images.is_blank(canvas_png(BLANK, transparent=True))
    assert images.is_blank(None)
    assert images.is_blank(b"")
    assert images.is_blank(b"not an image at all")


def test_a_drawn_digit_is_not_blank() -> None:
    assert not images.is_blank(canvas_png(ONE))
    assert not images.is_blank(canvas_png(SEVEN, transparent=True))
    # A vertical stroke 200 px long and 20 px wide.
    assert 3500 < images.ink_pixel_count(canvas_png(ONE)) < 5000


def test_a_dark_digit_on_white_paper_counts_as_ink() -> None:
    img = Image.new("L", (100, 100), 255)
    img.paste(0, (40, 10, 60, 90))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    assert images.ink_pixel_count(buf.getvalue()) == 20 * 80


def test_flatten_gives_white_ink_on_black_greyscale() -> None:
    for transparent in (False, True):
        flat = _decode(images.flatten_drawing(canvas_png(ONE, transparent=transparent)))
        assert flat.mode == "L" and flat.size == (280, 280)
        pixels = np.asarray(flat)
        assert pixels[0, 0] == 0  # paper
        assert pixels[140, 140] == 255  # ink
    with pytest.raises(images.NotAnImage):
        images.flatten_drawing(b"garbage")


def test_enlarge_keeps_hard_pixel_edges() -> None:
    small = Image.new("L", (28, 28), 0)
    small.putpixel((0, 0), 255)
    big = np.asarray(_decode(images.enlarge(images.to_png(small), 112)))
    assert big.shape == (112, 112)
    assert (big[:4, :4] == 255).all() and big[4, 4] == 0 and big[:, 4:].max() == 0


def test_thumbnail_uri_is_a_small_png_data_uri() -> None:
    uri = images.thumbnail_uri(canvas_png(SEVEN), size=56)
    assert uri is not None and uri.startswith("data:image/png;base64,")
    thumb = _decode(base64.b64decode(uri.split(",", 1)[1]))
    assert thumb.size == (56, 56)
    assert np.asarray(thumb).max() > 200  # the strokes survive the downscale
    assert images.thumbnail_uri(None) is None
    assert images.thumbnail_uri(b"not an image") is None
