"""Liveness, readiness and Prometheus metrics (outside /v1: never behind the API key)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from digit_predictor.api.deps import DrainDep, MetricsDep, ServicesDep
from digit_predictor.api.schemas import Health, Readiness
from digit_predictor.db import DatabaseUnavailable

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="The process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Ready: the model is loaded and the database answers",
    responses={503: {"model": Readiness, "description": "Not ready; `reasons` says why"}},
)
def readyz(services: ServicesDep, drain: DrainDep, response: Response) -> Readiness:
    reasons: list[str] = []
    if drain.draining:  # SIGTERM arrived: let the load balancer take this replica out first
        reasons.append("shutting down")
    model_loaded = services.predictor.classifier.is_warm
    if not model_loaded:
        reasons.append("model not loaded")
    try:
        services.db.ping()  # the pool records the outcome: it owns the database_up gauge
        database_up = True
    except DatabaseUnavailable as exc:
        database_up = False
        reasons.append(f"database unavailable: {exc}")
    queued = services.store.queued
    ready = model_loaded and database_up and not drain.draining
    if not ready:
        response.status_code = 503
    return Readiness(
        status="ready" if ready else "unavailable",
        model_loaded=model_loaded,
        model_version=services.predictor.classifier.version,
        database="up" if database_up else "down",
        queued_writes=queued,
        reasons=reasons,
    )


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
