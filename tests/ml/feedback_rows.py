"""Corrections as people would leave them: real handwriting (USPS) drawn on a canvas, stored
through the same queries the api uses, then answered."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from digit_predictor.db import Database, queries
from digit_predictor.ml.extra_digits import load_part, render_on_canvas
from digit_predictor.ml.synthetic_digits import to_png


@lru_cache(maxsize=2)
def _usps(split: str) -> tuple[np.ndarray, np.ndarray]:
    inks, labels = load_part("USPS train" if split == "train" else "USPS test")
    return inks, labels


def usps_drawings(
    n: int, *, split: str = "train", seed: int = 0, digit: int | None = None, start: int = 0
) -> list[tuple[bytes, int]]:
    """`n` USPS digits (optionally only one digit) drawn on a 280x280 canvas, as PNG bytes."""
    inks, labels = _usps(split)
    index = np.arange(len(labels))[start:]
    if digit is not None:
        index = index[labels[index] == digit]
    rng = np.random.default_rng(seed)
    return [(to_png(render_on_canvas(inks[i], rng)), int(labels[i])) for i in index[:n]]


def add_corrections(
    db: Database,
    drawings: Sequence[tuple[bytes, int]],
    *,
    answers: Sequence[int] | None = None,
    source: str | None = "web",
    predicted: int = 0,
) -> list[int]:
    """Store each drawing as a prediction and answer it (with `answers` when given)."""
    ids = []
    for i, (png, label) in enumerate(drawings):
        row = queries.insert_prediction(
            db,
            queries.NewPrediction(
                predicted_digit=predicted,
                confidence=0.5,
                probabilities=[0.1] * 10,
                image_data=png,
                model_version="test",
                source=source,
            ),
        )
        queries.record_feedback(db, row.id, label if answers is None else answers[i])
        ids.append(row.id)
    return ids
