"""Shared helpers for the model tests: drawings made with PIL, as the canvas would send them."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from digit_predictor.ml.data import MNIST_FILES, default_data_dir

Point = tuple[float, float]


def draw_strokes(
    strokes: Sequence[Sequence[Point]],
    width: int = 20,
    size: int = 280,
    offset: Point = (0.0, 0.0),
    scale: float = 1.0,
) -> np.ndarray:
    """Ink map (0..1) of strokes drawn with a round pen; points are in canvas pixels."""
    up = 4  # draw big and shrink: anti-aliased edges like a browser canvas
    img = Image.new("L", (size * up, size * up), 0)
    draw = ImageDraw.Draw(img)
    pen = max(1, round(width * scale * up))
    for stroke in strokes:
        pts = [((x * scale + offset[0]) * up, (y * scale + offset[1]) * up) for x, y in stroke]
        draw.line(pts, fill=255, width=pen, joint="curve")
        for x, y in (pts[0], pts[-1]):
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


# A "7" with a crossbar and a "2", in a 280x280 canvas's coordinates.
SEVEN = [[(60.0, 50.0), (200.0, 50.0), (110.0, 230.0)], [(100.0, 140.0), (180.0, 140.0)]]
TWO = [
    [(70.0, 90.0), (100.0, 55.0), (150.0, 50.0), (190.0, 80.0), (180.0, 130.0), (70.0, 230.0)],
    [(70.0, 230.0), (210.0, 230.0)],
]


def rgba_png(ink: np.ndarray, colour: tuple[int, int, int] = (255, 255, 255)) -> bytes:
    """The drawable canvas's format: coloured strokes, ink in alpha, transparent background."""
    rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
    rgba[..., :3] = colour
    rgba[..., 3] = np.rint(ink * 255).astype(np.uint8)
    return png_bytes(Image.fromarray(rgba, mode="RGBA"))


def grey_png(ink: np.ndarray, dark_on_light: bool = False) -> bytes:
    level = np.rint(ink * 255).astype(np.uint8)
    return png_bytes(Image.fromarray(255 - level if dark_on_light else level, mode="L"))


def png_bytes(img: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt)
    return buffer.getvalue()


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    values = image.astype(np.float64)
    ys, xs = np.mgrid[0 : image.shape[0], 0 : image.shape[1]]
    return float((ys * values).sum() / values.sum()), float((xs * values).sum() / values.sum())


def ink_box(image: np.ndarray, level: int = 64) -> tuple[int, int]:
    rows = np.flatnonzero((image >= level).any(axis=1))
    cols = np.flatnonzero((image >= level).any(axis=0))
    return int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The MNIST files. Missing, they skip the test on a developer's machine but fail it in CI
    (`CI` set, as .ci/run and CI services do): a green CI run has really trained and checked."""
    path = default_data_dir()
    if not all((path / name).is_file() for name in MNIST_FILES):
        message = f"MNIST files not found in {path} (set MNIST_DIR; see docs/model.md)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path
