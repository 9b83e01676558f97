"""A stored prediction -> why: its drawing read back from PostgreSQL, preprocessed exactly as when
it was served, and explained by the model serving now. Plain blocking code (plain `def` routes).

Each served model is prepared for gradients once (batch norm folded, parameters frozen: see
`explain.PreparedModel`), on its first explanation; a swapped-out model's copy goes with it."""

from __future__ import annotations

from dataclasses import dataclass

from digit_predictor.db import Database, queries
from digit_predictor.ml import explain
from digit_predictor.ml.inference import Classifier
from digit_predictor.ml.preprocess import preprocess_bytes


class DrawingUnreadable(ValueError):
    """The stored drawing no longer passes preprocessing (e.g. MAX_IMAGE_SIDE was lowered)."""


@dataclass(frozen=True)
class ExplainedPrediction:
    prediction: queries.Prediction
    explanation: explain.Explanation


def explain_prediction(
    db: Database,
    classifier: Classifier,
    prediction_id: int,
    digit: int | None = None,
    *,
    max_side: int,
) -> ExplainedPrediction:
    """Explain `digit` (by default the predicted one); PredictionNotFound for an unknown id."""
    prediction = queries.get_prediction(db, prediction_id)
    data = queries.get_image(db, prediction_id)
    try:
        pre = preprocess_bytes(data, max_side=max_side)
    except ValueError as exc:  # InvalidImageError, EmptyDrawingError
        raise DrawingUnreadable(
            f"the drawing of prediction {prediction_id} cannot be preprocessed any more: {exc}"
        ) from exc
    target = prediction.predicted_digit if digit is None else digit
    return ExplainedPrediction(
        prediction, explain.explain(explain.prepared(classifier.model), pre, target)
    )
