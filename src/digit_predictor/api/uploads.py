"""The checks every route that takes a drawing makes, in HTTP terms: the same limits, the same
messages and the same rejected-input metrics for `POST /v1/predictions` and `POST /v1/previews`.
What is done with the drawing (predict, store) is service.py's, without HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import HTTPException, UploadFile

from digit_predictor.api.metrics import Metrics
from digit_predictor.ml.preprocess import EmptyDrawingError, InvalidImageError


async def read_drawing(image: UploadFile, *, limit: int, metrics: Metrics) -> bytes:
    """The upload's bytes; 413 when there are more than `limit`."""
    data = await image.read(limit + 1)
    if len(data) > limit:
        metrics.rejected_inputs.labels(reason="too_many_bytes").inc()
        raise HTTPException(
            status_code=413,
            detail=f"too many bytes: the image is over the limit of {limit} bytes; "
            "send a smaller image (a drawing is usually a few kB as PNG)",
        )
    return data


@contextmanager
def bad_drawings_refused(metrics: Metrics) -> Iterator[None]:
    """A drawing the model cannot take (not an image, nothing drawn) -> 422 saying what to fix."""
    try:
        yield
    except (EmptyDrawingError, InvalidImageError) as exc:
        reason = "empty_drawing" if isinstance(exc, EmptyDrawingError) else "invalid_image"
        metrics.rejected_inputs.labels(reason=reason).inc()
        raise HTTPException(status_code=422, detail=str(exc)) from exc
