"""What routes need, as typed dependencies. Everything is built once, in the app's lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from digit_predictor.api.champion import ChampionWatcher
from digit_predictor.api.compute import Compute
from digit_predictor.api.metrics import Metrics
from digit_predictor.api.predictor import Predictor
from digit_predictor.api.shutdown import Drain
from digit_predictor.api.writer import PredictionStore
from digit_predictor.config import Settings
from digit_predictor.db import Database
from digit_predictor.ml.serving import ServingClassifier


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    predictor: Predictor  # the model serving now (swapped on promotion)
    champion: ChampionWatcher
    db: Database
    store: PredictionStore
    compute: Compute  # where decode, preprocess and the model run (a few threads)


# async: these only look things up, and a plain `def` dependency would cost a thread hop.
async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


async def get_settings(services: ServicesDep) -> Settings:
    return services.settings


async def get_db(services: ServicesDep) -> Database:
    return services.db


async def get_predictor(services: ServicesDep) -> Predictor:
    return services.predictor


async def get_store(services: ServicesDep) -> PredictionStore:
    return services.store


async def get_compute(services: ServicesDep) -> Compute:
    return services.compute


async def get_metrics(request: Request) -> Metrics:
    metrics: Metrics = request.app.state.metrics
    return metrics


async def get_drain(request: Request) -> Drain:
    drain: Drain = request.app.state.drain
    return drain


SettingsDep = Annotated[Settings, Depends(get_settings)]
DatabaseDep = Annotated[Database, Depends(get_db)]
PredictorDep = Annotated[Predictor, Depends(get_predictor)]
StoreDep = Annotated[PredictionStore, Depends(get_store)]
ComputeDep = Annotated[Compute, Depends(get_compute)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
DrainDep = Annotated[Drain, Depends(get_drain)]


async def get_classifier(services: ServicesDep) -> ServingClassifier:
    # Through the predictor: the model that answers predictions is the one explained.
    return services.predictor.classifier


ClassifierDep = Annotated[ServingClassifier, Depends(get_classifier)]
