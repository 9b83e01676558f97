"""Why a stored prediction answered what it did: attributions as numbers, or as a picture.

Computed on demand from the stored drawing (nothing is added to the predict path), in plain `def`
routes: the gradients are CPU work for the thread pool, never for the event loop.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Response

from digit_predictor.api.deps import ClassifierDep, DatabaseDep, SettingsDep
from digit_predictor.api.errors import error_responses
from digit_predictor.api.explainer import DrawingUnreadable, ExplainedPrediction, explain_prediction
from digit_predictor.api.routes.predictions import PredictionId
from digit_predictor.api.schemas import ErrorResponse, Explanation
from digit_predictor.db import queries
from digit_predictor.ml import explanation

router = APIRouter(prefix="/v1/predictions", tags=["explanations"])

DigitQuery = Annotated[
    int | None,
    Query(
        ge=0,
        le=9,
        description="the digit to explain, e.g. the corrected one; default: the predicted digit",
    ),
]
ScaleQuery = Annotated[
    int,
    Query(
        ge=1,
        le=explanation.MAX_OVERLAY_SCALE,
        description="pixels per input pixel: 8 gives 224x224",
    ),
]

RESPONSES: dict[int | str, dict[str, Any]] = {
    **error_responses(404, 410, 422, 503),
    409: {
        "model": ErrorResponse,
        "description": "The stored drawing no longer passes preprocessing; it cannot be explained",
    },
}


def _explain(
    db: DatabaseDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    prediction_id: int,
    digit: int | None,
) -> ExplainedPrediction:
    try:
        return explain_prediction(
            db, classifier, prediction_id, digit, max_side=settings.max_image_side
        )
    except DrawingUnreadable as exc:
        raise HTTPException(status_code=409, detail=str(exc)) from exc
    except queries.DrawingRemoved as exc:  # the retention policy dropped it; nothing to explain
        raise HTTPException(status_code=410, detail=str(exc)) from exc


@router.get(
    "/{prediction_id}/explanation",
    summary="Why this answer: each input pixel's share of a digit's score",
    description=(
        "Integrated gradients from a black field to the 28x28 input the model saw, for the "
        "predicted digit or `?digit=N`. The picture of it is `.../explanation/overlay`."
    ),
    responses=RESPONSES,
)
def get_explanation(
    prediction_id: PredictionId,
    db: DatabaseDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    digit: DigitQuery = None,
) -> Explanation:
    explained = _explain(db, classifier, settings, prediction_id, digit)
    result = explained.explanation
    attribution = result.attribution
    return Explanation(
        prediction_id=prediction_id,
        digit=attribution.digit,
        predicted_digit=explained.prediction.predicted_digit,
        method=explanation.METHOD,
        baseline=explanation.BASELINE,
        steps=attribution.steps,
        model_version=classifier.version,
        probability=attribution.probability,
        logit=attribution.logit,
        baseline_logit=attribution.baseline_logit,
        convergence_delta=attribution.convergence_delta,
        attributions=attribution.values.tolist(),
        model_input_png=base64.b64encode(result.model_input_png()).decode("ascii"),
        latency_ms=result.latency_ms,
    )


@router.get(
    "/{prediction_id}/explanation/overlay",
    summary="Why this answer, as a picture: the map over the 28x28 input the model saw",
    description=(
        "The input, dimmed, with red where its ink spoke for the digit and blue where it spoke "
        "against it (values smoothed over 3x3 pixels; the numbers are `.../explanation`)."
    ),
    response_class=Response,
    responses={
        200: {"description": "An RGB PNG, 28*scale pixels a side", "content": {"image/png": {}}},
        **RESPONSES,
    },
)
def get_explanation_overlay(
    prediction_id: PredictionId,
    db: DatabaseDep,
    classifier: ClassifierDep,
    settings: SettingsDep,
    digit: DigitQuery = None,
    scale: ScaleQuery = 8,
) -> Response:
    explained = _explain(db, classifier, settings, prediction_id, digit)
    return Response(
        content=explained.explanation.overlay_png(scale),
        media_type="image/png",
        headers={
            "X-Explained-Digit": str(explained.explanation.attribution.digit),
            "X-Content-Type-Options": "nosniff",
        },
    )
