"""The preprocessing must turn any reasonable drawing into an MNIST-like 28x28 digit."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from digit_predictor.ml import preprocess
from digit_predictor.ml.preprocess import (
    MNIST_MEAN,
    MNIST_STD,
    EmptyDrawingError,
    ink_map,
    preprocess_bytes,
    preprocess_image,
    preprocess_ink,
)

from .conftest import (
    SEVEN,
    TWO,
    Point,
    centre_of_mass,
    draw_strokes,
    grey_png,
    ink_box,
    png_bytes,
    rgba_png,
)


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean() / 255.0)


@pytest.mark.parametrize("strokes", [SEVEN, TWO])
def test_output_is_mnist_shaped_centred_and_fits_20x20(strokes: list[list[Point]]) -> None:
    result = preprocess_bytes(rgba_png(draw_strokes(strokes)))
    assert result.image.shape == (28, 28) and result.image.dtype == np.uint8
    assert result.tensor.shape == (1, 28, 28) and result.tensor.dtype == torch.float32
    cy, cx = centre_of_mass(result.image)
    assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5
    height, width = ink_box(result.image)
    assert max(height, width) in (19, 20, 21)  # the longer side fills the 20-pixel box
    assert height <= 21 and width <= 21
    assert result.image.max() == 255  # strokes are saturated, as in MNIST


def test_tensor_is_the_displayed_image_normalised() -> None:
    result = preprocess_bytes(rgba_png(draw_strokes(SEVEN)))
    expected = (torch.from_numpy(result.image).float() / 255.0 - MNIST_MEAN) / MNIST_STD
    assert torch.allclose(result.tensor[0], expected, atol=1e-6)


def test_moving_the_drawing_does_not_change_the_result() -> None:
    here = preprocess_ink(draw_strokes(SEVEN)).image
    there = preprocess_ink(draw_strokes(SEVEN, offset=(55.0, 30.0))).image
    corner = preprocess_ink(draw_strokes(SEVEN, offset=(-45.0, -35.0))).image
    assert mean_abs_diff(here, there) < 0.01
    assert mean_abs_diff(here, corner) < 0.01


@pytest.mark.parametrize("scale", [0.5, 0.35])
def test_scaling_the_drawing_does_not_change_the_result(scale: float) -> None:
    big = preprocess_ink(draw_strokes(TWO)).image
    small = preprocess_ink(draw_strokes(TWO, scale=scale)).image
    assert mean_abs_diff(big, small) < 0.04
    # A different digit is far away: the tolerance above means something.
    other = preprocess_ink(draw_strokes(SEVEN)).image
    assert mean_abs_diff(big, other) > 0.1


def test_ink_in_alpha_with_any_stroke_colour_and_dark_on_light_all_agree() -> None:
    ink = draw_strokes(TWO)
    reference = preprocess_bytes(grey_png(ink)).image
    variants = {
        "white strokes in alpha": rgba_png(ink, colour=(255, 255, 255)),
        "black strokes in alpha": rgba_png(ink, colour=(0, 0, 0)),
        "dark on light greyscale": grey_png(ink, dark_on_light=True),
        "dark on light RGB": png_bytes(
            Image.fromarray(255 - np.rint(ink * 255).astype(np.uint8)).convert("RGB")
        ),
        "opaque RGBA, white on black": png_bytes(
            Image.fromarray(np.rint(ink * 255).astype(np.uint8)).convert("RGBA")
        ),
    }
    for name, data in variants.items():
        assert mean_abs_diff(preprocess_bytes(data).image, reference) < 0.01, name


def test_jpeg_with_compression_noise_works() -> None:
    ink = draw_strokes(SEVEN)
    reference = preprocess_ink(ink).image
    jpeg = png_bytes(Image.fromarray(255 - np.rint(ink * 255).astype(np.uint8)), fmt="JPEG")
    assert mean_abs_diff(preprocess_bytes(jpeg).image, reference) < 0.03


@pytest.mark.parametrize(
    "image",
    [
        Image.new("RGBA", (280, 280), (0, 0, 0, 0)),  # untouched drawable canvas
        Image.new("RGB", (280, 280), (0, 0, 0)),
        Image.new("L", (280, 280), 255),
        Image.new("L", (280, 280), 128),
    ],
    ids=["transparent", "black", "white", "grey"],
)
def test_blank_canvas_is_an_empty_drawing(image: Image.Image) -> None:
    with pytest.raises(EmptyDrawingError):
        preprocess_image(image)


def test_faint_noise_is_an_empty_drawing() -> None:
    rng = np.random.default_rng(0)
    noise = (rng.random((280, 280)) * 0.1).astype(np.float32)
    with pytest.raises(EmptyDrawingError):
        preprocess_ink(noise)


def test_a_single_dot_or_a_speck_is_an_empty_drawing() -> None:
    with pytest.raises(EmptyDrawingError):
        preprocess_bytes(rgba_png(draw_strokes([[(140.0, 140.0), (140.0, 140.0)]])))
    speck = np.zeros((280, 280), dtype=np.float32)
    speck[200:202, 30:32] = 1.0
    with pytest.raises(EmptyDrawingError):
        preprocess_ink(speck)


def test_hairline_digit_is_thickened_to_mnist_strokes() -> None:
    hairline = preprocess_ink(draw_strokes(TWO, width=1)).image
    normal = preprocess_ink(draw_strokes(TWO)).image
    assert hairline.max() == 255
    # MNIST strokes are 2-3 pixels wide: a 1-pixel canvas line must not vanish to a grey thread.
    assert (hairline >= 128).sum() >= 0.6 * (normal >= 128).sum()
    assert mean_abs_diff(hairline, normal) < 0.09


def test_very_thick_strokes_are_thinned() -> None:
    thick = preprocess_ink(draw_strokes(TWO, width=60)).image
    normal = preprocess_ink(draw_strokes(TWO)).image
    assert (thick >= 128).sum() <= 1.6 * (normal >= 128).sum()


def test_digit_touching_every_edge() -> None:
    edge = [[(0.0, 0.0), (279.0, 0.0), (60.0, 279.0)], [(0.0, 150.0), (279.0, 150.0)]]
    result = preprocess_ink(draw_strokes(edge, width=24))
    cy, cx = centre_of_mass(result.image)
    assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5
    assert max(ink_box(result.image)) >= 19


def test_tiny_digit_in_a_corner_matches_the_big_one() -> None:
    tiny_strokes = [[(x * 0.18, y * 0.18) for x, y in stroke] for stroke in SEVEN]
    tiny = preprocess_ink(draw_strokes(tiny_strokes, width=4, offset=(228.0, 230.0))).image
    big = preprocess_ink(draw_strokes(SEVEN)).image
    assert mean_abs_diff(tiny, big) < 0.06
    assert max(ink_box(tiny)) >= 19


def test_long_thin_one_keeps_its_aspect_ratio() -> None:
    one = preprocess_ink(draw_strokes([[(140.0, 15.0), (143.0, 265.0)]], width=6))
    height, width = ink_box(one.image)
    assert height >= 19
    assert 1 <= width <= 6  # not stretched into a block
    cy, cx = centre_of_mass(one.image)
    assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5


def test_wide_short_drawing_fits_by_its_width() -> None:
    dash = preprocess_ink(draw_strokes([[(20.0, 140.0), (260.0, 150.0)]], width=20)).image
    height, width = ink_box(dash)
    assert width >= 19 and height <= 6


def test_mnist_digit_is_left_almost_unchanged(mnist_dir) -> None:  # type: ignore[no-untyped-def]
    from digit_predictor.ml.data import load_split

    test = load_split(mnist_dir, "t10k")
    diffs = [
        mean_abs_diff(preprocess_ink(img.astype(np.float32) / 255.0).image, img)
        for img in test.images[:50]
    ]
    assert float(np.mean(diffs)) < 0.04


def _canvases() -> dict[str, Image.Image]:
    level = np.rint(draw_strokes(SEVEN) * 255).astype(np.uint8)
    grey = Image.fromarray(level, mode="L")
    opaque = Image.merge("RGBA", [grey, grey, grey, Image.new("L", grey.size, 255)])
    transparent = Image.merge("RGBA", [Image.new("L", grey.size, 40)] * 3 + [grey])
    tinted = Image.merge("RGB", [grey, grey.point(lambda v: v // 2), grey.point(lambda v: v // 3)])
    strip = np.full(level.shape, 255, dtype=np.uint8)
    strip[:, :20] = 0  # mostly opaque, a transparent strip: flattened on the float path
    opaque_with_strip = Image.merge("RGBA", [grey, grey, grey, Image.fromarray(strip)])
    return {
        "L": grey,
        "L dark on light": grey.point(lambda v: 255 - v),
        "RGB tinted": tinted,
        "RGBA opaque (the canvas)": opaque,
        "RGBA ink in alpha": transparent,
        "RGBA opaque, a transparent strip": opaque_with_strip,
        "LA ink in alpha": transparent.convert("LA"),
        "P": tinted.convert("P"),
    }


@pytest.mark.parametrize("name", list(_canvases()))
def test_the_uint8_fast_path_gives_exactly_the_float_path_result(name: str) -> None:
    # preprocess_image works on one uint8 channel and makes only the crop float; the general
    # path (ink_map: a float map of the whole canvas) must give the very same digit.
    img = _canvases()[name]
    fast = preprocess_image(img)
    general = preprocess_ink(ink_map(img))
    assert np.array_equal(fast.image, general.image), name
    assert torch.equal(fast.tensor, general.tensor)


@pytest.mark.parametrize("name", list(_canvases()))
def test_png_bytes_give_what_pil_decodes(name: str) -> None:
    # preprocess_bytes hands 8-bit grey, RGB and RGBA PNGs to libspng; whatever decodes them,
    # the model must see the very digit PIL's pixels give.
    img = _canvases()[name]
    out = io.BytesIO()
    img.save(out, format="PNG")
    assert np.array_equal(preprocess_bytes(out.getvalue()).image, preprocess_image(img).image)


def test_the_uint8_border_median_is_the_float_paths_to_the_bit() -> None:
    rng = np.random.default_rng(11)
    for _ in range(2000):
        n = int(rng.integers(1, 3000))
        values = rng.integers(0, 256, n).astype(np.uint8)
        if rng.random() < 0.5:  # mostly one background value, as a canvas's border is
            values[rng.random(n) < 0.8] = int(rng.integers(0, 256))
        expected = float(np.median(values.astype(np.float32) / 255.0))
        assert preprocess._median_level(values) == expected


def test_resize_and_dilation_are_torchs_to_float_rounding() -> None:
    # Preprocessing runs without torch (the api's workers never import it); the PIL resize and
    # the numpy max filter must still be the torch operations the model was trained behind.
    import torch.nn.functional as F

    rng = np.random.default_rng(5)
    for _ in range(60):
        height, width = (int(v) for v in rng.integers(12, 300, size=2))
        if max(height, width) > 8 * min(height, width):
            continue  # a side under 3 pixels after the fit: filter-window edge cases apart
        crop = (rng.random((height, width)) * (rng.random((height, width)) > 0.6)).astype(
            np.float32
        )
        t = torch.from_numpy(crop)[None, None]
        radius = int(rng.integers(1, 6))
        dilated = F.max_pool2d(t, kernel_size=2 * radius + 1, stride=1, padding=radius)[0, 0]
        assert np.array_equal(preprocess._max_filter(crop, radius), dilated.numpy())
        fitted = preprocess._fit_box(crop)
        resized = F.interpolate(t, size=fitted.shape, mode="bilinear", antialias=True)[0, 0]
        reference = np.clip(resized.numpy(), 0.0, None)
        assert np.allclose(fitted, np.clip(reference / reference.max(), 0.0, 1.0), atol=1e-5)
