"""The lifespan, run in-process: what a worker sets up before it serves its first request."""

from __future__ import annotations

import gc
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from digit_predictor.api.main import create_app
from tests.api.conftest import in_process_settings


@pytest.fixture
def root_logging_restored() -> Iterator[None]:
    """The lifespan sends every log record to stdout as JSON; give pytest its handlers back."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.usefixtures("root_logging_restored")
def test_startup_objects_are_out_of_the_garbage_collectors_sight(
    migrated_database_url: str, model_path: Path
) -> None:
    # A full collection walked every object of the worker (modules, app, model): 45-125 ms
    # stalls under load. After start-up they are frozen, so collections only walk what is new.
    gc.unfreeze()
    try:
        app = create_app(in_process_settings(migrated_database_url, model_path))
        with TestClient(app) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() > 50_000
    finally:
        gc.unfreeze()
