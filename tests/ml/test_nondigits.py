"""The non-digit generators: what they draw, how it reaches the model, and the held-out split."""

from __future__ import annotations

import numpy as np
import pytest

from digit_predictor.ml.data import default_data_dir, load_split
from digit_predictor.ml.nondigits import (
    HELDOUT,
    HELDOUT_FONTS,
    LETTERS,
    LOOKALIKES,
    PEN_HELDOUT_FONTS,
    PEN_TRAIN_FONTS,
    SLASH_FREE,
    TRAIN,
    TRAIN_FONTS,
    DigitSource,
    filled_shape,
    generators,
    glyph,
    lookalike_letter,
    nondigit_set,
    pen_letter,
    pen_strokes,
)
from digit_predictor.ml.preprocess import FIELD


@pytest.fixture(scope="module")
def source() -> DigitSource:
    test = load_split(default_data_dir(), "t10k")
    return DigitSource(test.images[:300], test.labels[:300])


def test_every_generator_draws_brush_strokes_on_the_280_canvas(source: DigitSource) -> None:
    rng = np.random.default_rng(0)
    for name, generate in generators(source).items():
        for split in (TRAIN, HELDOUT):
            ink = generate(rng, split)
            assert ink.shape == (280, 280), name
            assert ink.dtype == np.float32 and ink.min() >= 0.0 and ink.max() <= 1.0, name
            # Strokes, not a blank (nor a fill, but for the shapes that are coloured in).
            most = 0.9 if name == "filled shapes" else 0.6
            assert 0.005 < float((ink > 0.5).mean()) < most, name
            # Anti-aliased like a browser canvas: there are partial-ink edge pixels.
            assert ((ink > 0.05) & (ink < 0.95)).any(), name


def test_sets_come_out_as_the_model_sees_a_drawing_and_repeat_by_seed(
    source: DigitSource,
) -> None:
    for name, generate in generators(source).items():
        first = nondigit_set(generate, 4, seed=3, split=HELDOUT)
        assert first.shape == (4, FIELD, FIELD) and first.dtype == np.uint8, name
        assert first.max() == 255, name  # preprocessed: strokes saturated like MNIST
        assert np.array_equal(first, nondigit_set(generate, 4, seed=3, split=HELDOUT)), name
        assert not np.array_equal(first, nondigit_set(generate, 4, seed=4, split=HELDOUT)), name


def test_held_out_letters_come_from_fonts_never_used_for_training() -> None:
    assert not set(TRAIN_FONTS) & set(HELDOUT_FONTS)
    assert TRAIN.fonts == TRAIN_FONTS and HELDOUT.fonts == HELDOUT_FONTS


def test_held_out_pen_letters_come_from_font_families_never_used_for_training() -> None:
    assert TRAIN.pen_fonts == PEN_TRAIN_FONTS and HELDOUT.pen_fonts == PEN_HELDOUT_FONTS
    # Hershey has the same glyphs under two names (cursive and scripts): compare strokes.
    assert pen_strokes("a", "cursive") == pen_strokes("a", "scripts")
    for train in PEN_TRAIN_FONTS:
        for held in PEN_HELDOUT_FONTS:
            assert all(pen_strokes(c, train) != pen_strokes(c, held) for c in "aekRW"), held


def test_pen_letters_are_upright_strokes_of_the_letter() -> None:
    (stem, foot) = pen_strokes("L", "futural")  # y grows downwards, as on the canvas
    assert stem[0][0] == stem[-1][0] and stem[-1][1] > stem[0][1]  # down the stem
    assert foot[0][1] == foot[-1][1] == max(y for _, y in stem)  # the foot at the bottom
    ink = pen_letter(np.random.default_rng(0), TRAIN)
    rows = np.flatnonzero((ink > 0.5).any(axis=1))
    assert ink.shape == (280, 280) and len(rows) > 40  # a letter's height, not a dot


def test_letters_that_look_like_digits_are_not_counted_as_non_digits() -> None:
    for char in "OoIlZzSsbqg":
        assert char in LOOKALIKES and char not in LETTERS
    assert set(LOOKALIKES.values()) <= set(range(10))
    assert len(LETTERS) >= 25  # still most of the alphabet
    ink = lookalike_letter(np.random.default_rng(0), HELDOUT)
    assert ink.shape == (280, 280) and ink.max() > 0.5


def test_glyphs_are_cropped_to_their_ink() -> None:
    image = glyph("W", TRAIN_FONTS[0])
    assert image.max() == 255
    assert image[:2].max() == 0 and image[-2:].max() == 0  # a 2 px margin, no more
    assert image[2:4].max() > 0 or image[:, 2:4].max() > 0


def test_two_digits_side_by_side_are_wider_than_tall(source: DigitSource) -> None:
    images = nondigit_set(generators(source)["two digits side by side"], 20, seed=1, split=TRAIN)
    ink = images > 50
    widths = ink.any(axis=1).sum(axis=1)
    heights = ink.any(axis=2).sum(axis=1)
    assert float(np.mean(widths > heights)) >= 0.9


def _crop(image: np.ndarray) -> bytes:
    rows = np.flatnonzero((image > 50).any(axis=1))
    cols = np.flatnonzero((image > 50).any(axis=0))
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].tobytes()


def test_digit_source_leaves_out_the_digits_a_slash_would_not_change(
    source: DigitSource,
) -> None:
    assert frozenset({0, 7}) == SLASH_FREE
    labels = np.zeros(len(source.labels), dtype=np.int64)
    labels[5] = 3  # every MNIST digit a "zero" but one
    only_zeros = DigitSource(source.images, labels)
    picks = {
        only_zeros.pick(np.random.default_rng(s), exclude=frozenset({0})).tobytes()
        for s in range(40)
    }
    mnist_crops = {_crop(image) for image in source.images}
    # The MNIST picks are all that one digit; the rest are pen-stroke digits.
    assert picks & mnist_crops == {_crop(source.images[5])}


def test_filled_shapes_are_coloured_in_not_outlines() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        ink = filled_shape(rng, TRAIN) > 0.5
        rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
        box = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        # An outline with a pen of at most 36 px covers little of a large box; these cover much.
        assert box.mean() > 0.3
