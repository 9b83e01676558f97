"""An uploaded drawing -> the model's answer, with the checks every drawing route makes.

POST /v1/previews uses these; POST /v1/predictions makes the same checks inline (it can switch to
these helpers: same limits, same messages, same metrics).
"""

from __future__ import annotations

from fastapi import HTTPException, UploadFile

from digit_predictor.api.metrics import Metrics
from digit_predictor.api.predictor import Outcome, Predictor
from digit_predictor.ml.preprocess import EmptyDrawingError, InvalidImageError


def read_drawing(image: UploadFile, *, limit: int, metrics: Metrics) -> bytes:
    """The upload's bytes; 413 when there are more than `limit`."""
    data = image.file.read(limit + 1)
    if len(data) > limit:
        metrics.rejected_inputs.labels(reason="too_many_bytes").inc()
        raise HTTPException(
            status_code=413,
            detail=f"too many bytes: the image is over the limit of {limit} bytes; "
            "send a smaller image (a drawing is usually a few kB as PNG)",
        )
    return data


def predict_drawing(predictor: Predictor, data: bytes, *, metrics: Metrics) -> Outcome:
    """The model's answer; 422 (saying what to fix) for anything that is not a drawing."""
    try:
        outcome = predictor.predict(data)
    except EmptyDrawingError as exc:
        metrics.rejected_inputs.labels(reason="empty_drawing").inc()
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    except InvalidImageError as exc:
        metrics.rejected_inputs.labels(reason="invalid_image").inc()
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    metrics.inference_latency.observe(outcome.latency_ms / 1000.0)
    return outcome
