"""POST a drawing, list and fetch predictions, give feedback."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, HTTPException, Path, Query, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response as StarletteResponse

from digit_predictor.api.deps import (
    ComputeDep,
    DatabaseDep,
    MetricsDep,
    PredictorDep,
    SettingsDep,
    StoreDep,
)
from digit_predictor.api.errors import InvalidBody, error_responses
from digit_predictor.api.logs import request_id_var
from digit_predictor.api.schemas import (
    ErrorResponse,
    Feedback,
    PredictionCreated,
    PredictionPage,
    PredictionRecord,
)
from digit_predictor.api.service import predict_and_store
from digit_predictor.api.uploads import bad_drawings_refused, read_drawing
from digit_predictor.api.writer import QueueFull
from digit_predictor.db import queries
from digit_predictor.db.queries import PredictionNotFound

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
async def create_prediction(
    image: Annotated[
        UploadFile,
        File(description="the drawing, PNG or JPEG, at most 1 MiB and 2048x2048 pixels"),
    ],
    predictor: PredictorDep,
    compute: ComputeDep,
    store: StoreDep,
    metrics: MetricsDep,
    settings: SettingsDep,
    response: Response,
    source: Annotated[
        str | None,
        Form(max_length=64, pattern=SOURCE_PATTERN, description="who sent it, e.g. 'web'"),
    ] = None,
) -> PredictionCreated:
    data = await read_drawing(image, limit=settings.max_upload_bytes, metrics=metrics)
    try:
        with bad_drawings_refused(metrics):
            stored = await predict_and_store(
                data,
                source=source,
                # The request's id (also in its log line and X-Request-ID) identifies the row.
                request_id=request_id_var.get() or uuid.uuid4(),
                compute=compute,
                predictor=predictor,
                store=store,
                metrics=metrics,
            )
    except QueueFull as exc:
        raise HTTPException(
            status_code=503,
            detail=(
                f"the database is unavailable and {exc}; the prediction was not kept. "
                "Try again in a minute"
            ),
            headers={"Retry-After": "30"},
        ) from exc
    if stored.id is None:
        response.status_code = 202
    else:
        response.headers["Location"] = f"/v1/predictions/{stored.id}"
    outcome, row = stored.outcome, stored.row
    return PredictionCreated(
        id=stored.id,
        request_id=row.request_id,
        digit=outcome.digit,
        confidence=outcome.confidence,
        probabilities=outcome.probabilities,
        is_digit=outcome.is_digit,
        ood_score=outcome.ood_score,
        model_version=row.model_version,
        created_at=row.created_at or datetime.now(UTC),
        latency_ms=outcome.latency_ms,
        source=row.source,
        model_input_png=outcome.model_input_png_base64,
        stored=stored.id is not None,
    )


@router.get(
    "",
    summary="Stored predictions, newest first, without image bytes",
    description=(
        "Page with `before`: `?limit=20` gives the newest rows and a `next` cursor; "
        "`?limit=20&before=<next>` the rows older than that one, as fast near the oldest rows "
        "as on the first page. `offset` still works but is slow far from the newest rows "
        "(the database walks every skipped row); it cannot be combined with `before`."
    ),
    responses=error_responses(404, 422, 503),
)
def list_predictions(
    db: DatabaseDep,
    limit: Annotated[int, Query(ge=1, le=100, description="page size")] = 20,
    before: Annotated[
        int | None,
        Query(ge=1, le=MAX_ID, description="cursor: only rows older than this prediction's id"),
    ] = None,
    offset: Annotated[
        int, Query(ge=0, le=1_000_000_000, description="rows to skip (slow when large)")
    ] = 0,
) -> PredictionPage:
    if before is not None and offset:
        raise HTTPException(status_code=422, detail="use either `before` or `offset`, not both")
    if offset:
        rows = queries.recent_predictions(db, limit=limit, offset=offset)
        next_before = None
    else:
        try:
            page = queries.predictions_page(db, limit=limit, before=before)
        except queries.PredictionNotFound as exc:
            raise HTTPException(
                status_code=404,
                detail=f"{exc}, so there is nothing to page from: start again without `before`",
            ) from exc
        rows, next_before = page.items, page.next_before
    return PredictionPage(
        items=[PredictionRecord.from_row(r) for r in rows],
        limit=limit,
        offset=offset,
        before=before,
        next=next_before,
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
        **error_responses(404, 410, 422, 503),
    },
)
def get_image(prediction_id: PredictionId, db: DatabaseDep) -> Response:
    try:
        data = queries.get_image(db, prediction_id)
    except queries.DrawingRemoved as exc:
        raise HTTPException(status_code=410, detail=str(exc)) from exc
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


FEEDBACK_BODY = 'send JSON {"true_digit": N} with N an integer from 0 to 9'


class FeedbackRoute(APIRoute):
    """The feedback body is only `{"true_digit": N}`: whatever is wrong with it (not JSON,
    missing, not an integer 0-9), the 422 says what to send."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, StarletteResponse]]:
        handler = super().get_route_handler()

        async def explain_body_errors(request: Request) -> StarletteResponse:
            try:
                return await handler(request)
            except RequestValidationError as exc:
                raise InvalidBody(exc.errors(), FEEDBACK_BODY) from exc
            except StarletteHTTPException as exc:
                if exc.status_code != 400:  # 400: FastAPI could not parse the body at all
                    raise
                raise InvalidBody(
                    [{"loc": ("body",), "msg": "not readable as JSON", "type": "json_invalid"}],
                    FEEDBACK_BODY,
                ) from exc

        return explain_body_errors


feedback_router = APIRouter(
    prefix="/v1/predictions", tags=["predictions"], route_class=FeedbackRoute
)


@feedback_router.post(
    "/{prediction_id}/feedback",
    summary="Record the digit that was really drawn",
    responses={
        404: {
            "model": ErrorResponse,
            "description": "No stored prediction with this id (a 202 answer has no id yet)",
        },
        422: {
            "model": ErrorResponse,
            "description": 'The body is not {"true_digit": N} with N an integer 0-9',
        },
        **error_responses(503),
    },
)
def record_feedback(
    prediction_id: PredictionId, feedback: Feedback, store: StoreDep
) -> PredictionRecord:
    try:
        row = store.record_feedback(prediction_id, feedback.true_digit)
    except PredictionNotFound as exc:
        raise HTTPException(
            status_code=404,
            detail=(
                f"{exc}; use the id a 201 answer of POST /v1/predictions gave "
                "(a 202 answer has none yet)"
            ),
        ) from exc
    return PredictionRecord.from_row(row)
