"""USPS and optdigits files parse, and their digits survive the trip onto a canvas."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from digit_predictor.ml.extra_digits import load_optdigits, load_usps, render_on_canvas
from digit_predictor.ml.preprocess import preprocess_ink

from .conftest import centre_of_mass


def test_usps_format(tmp_path: Path) -> None:
    values = -np.ones(256)
    values[16 * 8 : 16 * 9] = 1.0  # one bright row: a dash
    line = "3.0000 " + " ".join(f"{v:.4f}" for v in values)
    path = tmp_path / "zip.test.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(line + "\n" + line + "\n")
    ink, labels = load_usps(path)
    assert ink.shape == (2, 16, 16) and labels.tolist() == [3, 3]
    assert ink[0, 8].min() == 1.0 and ink[0, 0].max() == 0.0


def test_optdigits_format(tmp_path: Path) -> None:
    header = "BU handwritten digit database\nntot = 2\n"
    block = "\n".join(("0" * 14 + "1" * 4 + "0" * 14) for _ in range(32))
    path = tmp_path / "optdigits-orig.windep"
    path.write_text(header + block + "\n 1\n" + block + "\n 7\n")
    ink, labels = load_optdigits(path)
    assert ink.shape == (2, 32, 32) and labels.tolist() == [1, 7]
    assert ink[0, :, 14:18].min() == 1.0 and ink[0, :, :14].max() == 0.0


def test_rendered_scan_is_preprocessed_like_a_drawing() -> None:
    ink = np.zeros((16, 16), dtype=np.float32)
    ink[2:14, 4] = ink[2:14, 11] = ink[2, 4:12] = ink[13, 4:12] = 1.0  # a box-shaped 0
    canvas = render_on_canvas(ink, np.random.default_rng(0))
    assert canvas.shape == (280, 280)
    image = preprocess_ink(canvas).image
    cy, cx = centre_of_mass(image)
    assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5
