"""Predict, and predict and store: what `POST /v1/previews` and `POST /v1/predictions` do, as
plain functions without HTTP."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from digit_predictor.api.compute import Compute
from digit_predictor.api.metrics import Metrics
from digit_predictor.api.predictor import Outcome, Predictor
from digit_predictor.api.writer import PredictionStore
from digit_predictor.db.queries import NewPrediction


@dataclass(frozen=True)
class StoredPrediction:
    outcome: Outcome
    row: NewPrediction
    id: int | None  # None: queued, written once PostgreSQL answers (the api answers 202)


async def predict(
    data: bytes, *, compute: Compute, predictor: Predictor, metrics: Metrics
) -> Outcome:
    """Raises InvalidImageError / EmptyDrawingError (bad drawing). Stores and counts nothing."""
    outcome = await compute.predict(predictor, data)
    metrics.inference_latency.observe(outcome.latency_ms / 1000.0)
    return outcome


async def predict_and_store(
    data: bytes,
    *,
    source: str | None,
    request_id: uuid.UUID,
    compute: Compute,
    predictor: Predictor,
    store: PredictionStore,
    metrics: Metrics,
) -> StoredPrediction:
    """Raises InvalidImageError / EmptyDrawingError (bad drawing), QueueFull (cannot keep it),
    RowRejected (the database refused the row: a bug)."""
    outcome = await predict(data, compute=compute, predictor=predictor, metrics=metrics)
    row = NewPrediction(
        predicted_digit=outcome.digit,
        confidence=outcome.confidence,
        probabilities=outcome.probabilities,
        is_digit=outcome.is_digit,
        ood_score=outcome.ood_score,
        image_data=data,
        model_version=outcome.model_version,
        latency_ms=outcome.latency_ms,
        source=source or None,
        request_id=request_id,
        created_at=datetime.now(UTC),  # the answer says it, even when the row is queued
    )
    row_id = await store.save(row)
    metrics.predictions.labels(digit=str(outcome.digit)).inc()
    if row_id is None:
        metrics.queued_writes.inc()
    return StoredPrediction(outcome=outcome, row=row, id=row_id)
