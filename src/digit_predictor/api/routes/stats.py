"""Statistics over stored predictions, and the loaded model's card."""

from __future__ import annotations

from fastapi import APIRouter

from digit_predictor.api.deps import DatabaseDep, ServicesDep, SettingsDep
from digit_predictor.api.errors import error_responses
from digit_predictor.api.schemas import ModelCard, Stats
from digit_predictor.db import queries

router = APIRouter(prefix="/v1", tags=["stats"])


@router.get(
    "/stats",
    summary="Totals, accuracy on feedback, confusion counts, per-day counts, today's high score",
    responses=error_responses(503),
)
def get_stats(db: DatabaseDep, settings: SettingsDep) -> Stats:
    tz = settings.tz
    stats = queries.statistics(db, tz)
    high = queries.high_score_today(db, tz)
    return Stats.build(stats, high, settings.high_score_tz)


@router.get("/model", summary="The model card of the loaded model", tags=["model"])
async def get_model(services: ServicesDep) -> ModelCard:
    return ModelCard.model_validate(services.predictor.classifier.card)
