"""Predict as you draw: the model's answer for a drawing, never stored and never counted."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, UploadFile

from digit_predictor.api.deps import ComputeDep, MetricsDep, PredictorDep, SettingsDep
from digit_predictor.api.errors import error_responses
from digit_predictor.api.routes.predictions import MultipartRoute
from digit_predictor.api.schemas import Preview
from digit_predictor.api.service import predict
from digit_predictor.api.uploads import bad_drawings_refused, read_drawing

router = APIRouter(prefix="/v1/previews", tags=["previews"], route_class=MultipartRoute)


@router.post(
    "",
    summary="Predict the digit in a drawing without storing it",
    description=(
        "The same checks, limits, preprocessing and model as `POST /v1/predictions`, but nothing "
        "is written (not even to the write queue) and it does not count as a prediction. Press "
        "Predict (`POST /v1/predictions`) to keep an answer and give feedback on it."
    ),
    responses=error_responses(400, 408, 413, 415, 422),
)
async def create_preview(
    image: Annotated[
        UploadFile,
        File(description="the drawing, PNG or JPEG, at most 1 MiB and 2048x2048 pixels"),
    ],
    predictor: PredictorDep,
    compute: ComputeDep,
    settings: SettingsDep,
    metrics: MetricsDep,
) -> Preview:
    data = await read_drawing(image, limit=settings.max_upload_bytes, metrics=metrics)
    with bad_drawings_refused(metrics):
        outcome = await predict(data, compute=compute, predictor=predictor, metrics=metrics)
    return Preview(
        digit=outcome.digit,
        confidence=outcome.confidence,
        probabilities=outcome.probabilities,
        is_digit=outcome.is_digit,
        ood_score=outcome.ood_score,
        model_version=outcome.model_version,  # the model that answered (it can swap)
        latency_ms=outcome.latency_ms,
        model_input_png=outcome.model_input_png_base64,
    )
