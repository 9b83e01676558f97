"""A stored prediction -> why: its drawing read back from PostgreSQL, preprocessed exactly as when
it was served, and explained by the model serving now. Plain blocking code (plain `def` routes).

Explanations need gradients, so torch: the worker imports it on the first explanation asked of
it, never before (a worker that only predicts stays small: docs/profile.md). The served
model's weights are then loaded into torch and prepared for gradients (batch norm folded,
parameters frozen: see `explain.PreparedModel`) once per served model; a swapped-out model's
copy goes with it.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from digit_predictor.db import Database, queries
from digit_predictor.ml.explanation import Explanation
from digit_predictor.ml.preprocess import preprocess_bytes
from digit_predictor.ml.serving import ServingClassifier

if TYPE_CHECKING:
    from digit_predictor.ml.explain import PreparedModel


class DrawingUnreadable(ValueError):
    """The stored drawing no longer passes preprocessing (e.g. MAX_IMAGE_SIDE was lowered)."""


@dataclass(frozen=True)
class ExplainedPrediction:
    prediction: queries.Prediction
    explanation: Explanation


_prepared: weakref.WeakKeyDictionary[ServingClassifier, PreparedModel] = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def prepared_for_gradients(classifier: ServingClassifier) -> PreparedModel:
    """The torch form of a served model, made on its first explanation and kept while it serves."""
    from digit_predictor.ml import explain  # torch: here, on demand (see the module's docstring)
    from digit_predictor.ml.inference import Classifier

    with _prepared_lock:
        ready = _prepared.get(classifier)
        if ready is None:
            model = Classifier.from_weights(classifier.arch, classifier.weights, classifier.card)
            ready = _prepared[classifier] = explain.PreparedModel(model.model)
        return ready


def explain_prediction(
    db: Database,
    classifier: ServingClassifier,
    prediction_id: int,
    digit: int | None = None,
    *,
    max_side: int,
) -> ExplainedPrediction:
    """Explain `digit` (by default the predicted one); PredictionNotFound for an unknown id."""
    from digit_predictor.ml import explain  # torch, on demand

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
        prediction, explain.explain(prepared_for_gradients(classifier), pre, target)
    )
