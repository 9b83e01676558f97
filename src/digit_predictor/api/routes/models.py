"""The model registry, read-only: which versions exist, which one serves, and their gates."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException

from digit_predictor.api.deps import DatabaseDep
from digit_predictor.api.errors import error_responses
from digit_predictor.api.schemas import ChampionModel, ErrorResponse, ModelVersion
from digit_predictor.db import registry

router = APIRouter(prefix="/v1/models", tags=["model"])


@router.get(
    "",
    summary="Every model version, newest first, with status and gate figures",
    responses=error_responses(503),
)
def list_models(db: DatabaseDep) -> list[ModelVersion]:
    return [ModelVersion.from_record(record) for record in registry.list_models(db)]


@router.get(
    "/champion",
    summary="The version every api process serves, with its model card",
    responses={
        404: {"model": ErrorResponse, "description": "The registry has no champion yet"},
        **error_responses(503),
    },
)
def get_champion(db: DatabaseDep) -> ChampionModel:
    record = registry.champion(db)
    if record is None:
        raise HTTPException(status_code=404, detail="the model registry has no champion yet")
    return ChampionModel(**ModelVersion.from_record(record).model_dump(), card=record.card)
