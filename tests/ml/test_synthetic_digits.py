"""The synthetic canvas drawings behind the benchmarks look like what they claim to be."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from digit_predictor.ml.data import load_split
from digit_predictor.ml.evaluate import canvas_sets, plain_resize
from digit_predictor.ml.preprocess import decode_image, preprocess_bytes
from digit_predictor.ml.synthetic_digits import (
    TEMPLATES,
    ink_depth,
    pen_digit,
    redraw_digit,
    thin,
    to_png,
)

from .conftest import centre_of_mass


def test_thinning_leaves_a_one_pixel_centre_line() -> None:
    bar = np.zeros((30, 60), dtype=bool)
    bar[10:20, 5:55] = True
    line = thin(bar)
    assert line.any()
    assert line.sum(axis=0).max() == 1  # one pixel thick everywhere
    rows = np.flatnonzero(line.any(axis=1))
    assert set(rows.tolist()) <= {13, 14, 15, 16}


def test_ink_depth_is_the_distance_to_the_background() -> None:
    shape = np.zeros((20, 40), dtype=bool)
    shape[2:11, 2:11] = True  # a 9x9 square: its centre is 5 layers deep
    shape[15, 5:35] = True  # a hairline: 1 deep
    depth = ink_depth(shape)
    assert depth[6, 6] == 5
    assert depth[2, 2] == 1
    assert depth[15, 20] == 1
    assert (depth[~shape] == 0).all()


def test_a_filled_loop_stays_filled_when_redrawn_with_a_thin_brush() -> None:
    # A 9 whose loop the writer filled solid: a blob on a thin stem.
    yy, xx = np.mgrid[0:28, 0:28]
    nine = np.zeros((28, 28), dtype=np.uint8)
    nine[(yy - 9) ** 2 + (xx - 14) ** 2 <= 25] = 255
    nine[9:25, 17:19] = 255
    brush = 10.0
    canvas = redraw_digit(
        nine, np.random.default_rng(0), height_share=(0.8, 0.8), brush=(brush, brush)
    )
    # Traced along its centre line alone the blob would be a dash as wide as the brush.
    assert ink_depth(canvas > 0.5).max() > 2 * brush / 2
    # The stem is still drawn with the brush, not blown up to the blob's width.
    rows = np.flatnonzero((canvas > 0.5).any(axis=1))
    top, bottom = rows[0], rows[-1]
    stem = canvas[top + (bottom - top) * 3 // 4 : bottom - int(brush)] > 0.5
    assert 0 < stem.sum(axis=1).max() <= brush + 3


def test_redrawn_mnist_digit_comes_back_through_preprocessing(mnist_dir: Path) -> None:
    test = load_split(mnist_dir, "t10k")
    rng = np.random.default_rng(0)
    for image in test.images[:10]:
        canvas = redraw_digit(image, rng)
        assert canvas.shape == (280, 280)
        back = preprocess_bytes(to_png(canvas)).image
        # Not identical (new strokes), but clearly the same digit shape.
        assert np.abs(back.astype(float) - image.astype(float)).mean() / 255 < 0.15


def test_pen_digits_cover_every_digit_on_a_canvas() -> None:
    rng = np.random.default_rng(0)
    assert sorted(TEMPLATES) == list(range(10))
    for digit in range(10):
        ink = pen_digit(digit, rng)
        assert ink.shape == (280, 280)
        assert 0.01 < float((ink > 0.5).mean()) < 0.5


def test_png_styles_decode_to_the_same_drawing() -> None:
    ink = pen_digit(7, np.random.default_rng(3))
    images = [preprocess_bytes(to_png(ink, style)).image for style in
              ("alpha", "white_on_black", "black_on_white")]  # fmt: skip
    for image in images[1:]:
        assert np.abs(image.astype(int) - images[0].astype(int)).max() <= 2


def test_plain_resize_keeps_the_off_centre_placement() -> None:
    ink = np.zeros((280, 280), dtype=np.float32)
    ink[10:70, 200:210] = 1.0  # a small "1" in the top-right corner
    plain = plain_resize(to_png(ink))
    cy, cx = centre_of_mass(plain)
    assert cy < 6 and cx > 18  # the contrast column really is the naive method
    assert decode_image(to_png(ink)).size == (280, 280)


def test_canvas_sets_pair_images_with_labels(mnist_dir: Path) -> None:
    test = load_split(mnist_dir, "t10k")
    sets = canvas_sets(test, n=8, pen_n=10)
    assert len(sets) == 4
    for images, labels in sets.values():
        assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
        assert len(images) == len(labels)
    pen_labels = next(labels for name, (_, labels) in sets.items() if name.startswith("pen"))
    assert pen_labels.tolist() == list(range(10))
