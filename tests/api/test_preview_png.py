"""The answer's preview of the model input: a PNG written by the api itself (not PIL), which
every PNG reader must take, showing exactly what the model saw."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from digit_predictor.api.predictor import Predictor, preview_png
from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.ml.serving import ServingClassifier
from tests.api import drawings


def decoded(png: bytes) -> Image.Image:
    Image.open(io.BytesIO(png)).verify()  # chunk CRCs, structure
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


@pytest.mark.parametrize("shape", [(28, 28), (1, 1), (5, 40), (40, 5)])
@pytest.mark.parametrize("fill", ["random", "zeros", "full"])
def test_pil_reads_back_the_same_pixels(shape: tuple[int, int], fill: str) -> None:
    rng = np.random.default_rng(sum(shape))
    pixels = {
        "random": rng.integers(0, 256, size=shape, dtype=np.uint8),
        "zeros": np.zeros(shape, dtype=np.uint8),
        "full": np.full(shape, 255, dtype=np.uint8),
    }[fill]
    image = decoded(preview_png(pixels))
    assert image.format == "PNG" and image.mode == "L" and image.size == shape[::-1]
    assert np.array_equal(np.asarray(image), pixels)


def test_a_non_contiguous_view_is_written_as_its_values() -> None:
    pixels = np.arange(56 * 28, dtype=np.uint16).reshape(56, 28)[::2] % 256  # strided, not uint8
    assert np.array_equal(np.asarray(decoded(preview_png(pixels))), pixels.astype(np.uint8))


def test_the_answer_previews_exactly_the_model_input() -> None:
    predictor = Predictor(ServingClassifier.load(DEFAULT_MODEL_PATH), max_side=2048)
    for digit in (0, 4, 7):
        outcome = predictor.predict(drawings.drawing_png(digit))
        png = base64.b64decode(outcome.model_input_png_base64)
        assert np.array_equal(np.asarray(decoded(png)), outcome.model_input)
