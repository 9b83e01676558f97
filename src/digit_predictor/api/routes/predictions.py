"""POST a drawing, list and fetch predictions, give feedback."""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Response, UploadFile
from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse

from digit_predictor.api.deps import DatabaseDep, ServicesDep
from digit_predictor.api.errors import error_responses
from digit_predictor.api.logs import request_id_var
from digit_predictor.api.schemas import (
    Feedback,
    PredictionCreated,
    PredictionPage,
    PredictionRecord,
)
from digit_predictor.api.write_queue import QueueFull
from digit_predictor.db import queries
from digit_predictor.ml.preprocess import EmptyDrawingError, InvalidImageError

log = logging.getLogger(__name__)

MAX_ID = 2**63 - 1  # PostgreSQL bigint
PredictionId = Annotated[int, Path(ge=1, le=MAX_ID, description="the prediction's id")]
# Printable text only: control characters (NUL above all, and the C1 range that invalid UTF-8
# turns into, as Starlette falls back to Latin-1) have no place in a short label.
SOURCE_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
IMAGE_TYPES = {b"\x89PNG\r\n\x1a\n": "image/png", b"\xff\xd8\xff": "image/jpeg"}


class MultipartRoute(APIRoute):
    """Refuses (415) a body that is not multipart/form-data before FastAPI parses it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, StarletteResponse]]:
        handler = super().get_route_handler()

        async def check_content_type(request: Request) -> StarletteResponse:
            content_type = request.headers.get("content-type", "")
            if content_type.split(";", 1)[0].strip().lower() != "multipart/form-data":
                raise HTTPException(
                    status_code=415,
                    detail=(
                        f"wrong content type {content_type or '(none)'!r}: send "
                        "multipart/form-data with the drawing in the file field 'image'"
                    ),
                )
            return await handler(request)

        return check_content_type


router = APIRouter(prefix="/v1/predictions", tags=["predictions"])
upload_router = APIRouter(
    prefix="/v1/predictions", tags=["predictions"], route_class=MultipartRoute
)


@upload_router.post(
    "",
    status_code=201,
    response_model=PredictionCreated,
    summary="Predict the digit in a drawing and store it",
    responses={
        201: {"description": "Predicted and stored; `id` is the row's id"},
        202: {
            "model": PredictionCreated,
            "description": (
                "Predicted, but the database is unavailable: the row is queued and written once "
                "it is back. `id` is null, so feedback is not possible for this prediction."
            ),
        },
        **error_responses(400, 408, 413, 415, 422, 503),
    },
)
def create_prediction(
    image: Annotated[
        UploadFile,
        File(description="the drawing, PNG or JPEG, at most 1 MiB and 2048x2048 pixels"),
    ],
    services: ServicesDep,
    response: Response,
    source: Annotated[
        str | None,
        Form(max_length=64, pattern=SOURCE_PATTERN, description="who sent it, e.g. 'web'"),
    ] = None,
) -> PredictionCreated:
    settings = services.settings
    limit = settings.max_upload_bytes
    data = image.file.read(limit + 1)
    if len(data) > limit:
        services.metrics.rejected_inputs.labels(reason="too_many_bytes").inc()
        raise HTTPException(
            status_code=413,
            detail=f"too many bytes: the image is over the limit of {limit} bytes; "
            "send a smaller image (a drawing is usually a few kB as PNG)",
        )
    try:
        outcome = services.predictor.predict(data)
    except EmptyDrawingError as exc:
        services.metrics.rejected_inputs.labels(reason="empty_drawing").inc()
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    except InvalidImageError as exc:
        services.metrics.rejected_inputs.labels(reason="invalid_image").inc()
        raise HTTPException(status_code=422, detail=str(exc)) from exc
    services.metrics.inference_latency.observe(outcome.latency_ms / 1000.0)

    row = queries.NewPrediction(
        predicted_digit=outcome.digit,
        confidence=outcome.confidence,
        probabilities=outcome.probabilities,
        image_data=data,
        model_version=outcome.model_version,
        latency_ms=outcome.latency_ms,
        source=source or None,
        created_at=datetime.now(UTC),
        # The request's id (also in its log line and X-Request-ID) identifies the row.
        request_id=request_id_var.get() or uuid.uuid4(),
    )
    try:
        stored = services.store.save(row)
    except QueueFull as exc:
        raise HTTPException(
            status_code=503,
            detail=(
                f"the database is unavailable and {exc}; the prediction was not kept. "
                "Try again in a minute"
            ),
            headers={"Retry-After": "30"},
        ) from exc
    services.metrics.predictions.labels(digit=str(outcome.digit)).inc()
    if stored is None:
        response.status_code = 202
    else:
        response.headers["Location"] = f"/v1/predictions/{stored.id}"
    return PredictionCreated(
        id=stored.id if stored else None,
        request_id=row.request_id,
        digit=outcome.digit,
        confidence=outcome.confidence,
        probabilities=outcome.probabilities,
        model_version=row.model_version,
        created_at=stored.created_at if stored else row.created_at or datetime.now(UTC),
        latency_ms=outcome.latency_ms,
        source=row.source,
        model_input_png=base64.b64encode(outcome.model_input_png()).decode("ascii"),
        stored=stored is not None,
    )


@router.get(
    "",
    summary="Stored predictions, newest first, without image bytes",
    responses=error_responses(422, 503),
)
def list_predictions(
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000, description="rows to skip")] = 0,
) -> PredictionPage:
    rows = queries.recent_predictions(db, limit=limit, offset=offset)
    return PredictionPage(
        items=[PredictionRecord.from_row(r) for r in rows],
        limit=limit,
        offset=offset,
        total=queries.count_predictions(db),
    )


@router.get(
    "/{prediction_id}",
    summary="One stored prediction",
    responses=error_responses(404, 422, 503),
)
def get_prediction(prediction_id: PredictionId, db: DatabaseDep) -> PredictionRecord:
    return PredictionRecord.from_row(queries.get_prediction(db, prediction_id))


@router.get(
    "/{prediction_id}/image",
    summary="The drawing exactly as it was submitted",
    response_class=Response,
    responses={
        200: {
            "description": "The image bytes",
            "content": {"image/png": {}, "image/jpeg": {}},
        },
        **error_responses(404, 422, 503),
    },
)
def get_image(prediction_id: PredictionId, db: DatabaseDep) -> Response:
    data = queries.get_image(db, prediction_id)
    media_type = next(
        (kind for magic, kind in IMAGE_TYPES.items() if data.startswith(magic)),
        "application/octet-stream",
    )
    return Response(
        content=data,
        media_type=media_type,
        headers={
            "Cache-Control": "private, max-age=86400, immutable",
            "X-Content-Type-Options": "nosniff",
        },
    )


@router.post(
    "/{prediction_id}/feedback",
    summary="Record the digit that was really drawn",
    responses=error_responses(404, 422, 503),
)
def record_feedback(
    prediction_id: PredictionId, feedback: Feedback, db: DatabaseDep
) -> PredictionRecord:
    row = queries.record_feedback(db, prediction_id, feedback.true_digit)
    return PredictionRecord.from_row(row)
