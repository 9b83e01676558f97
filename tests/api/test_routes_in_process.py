"""Route behaviour in-process: the real app and services, no uvicorn process (see conftest).

The over-HTTP suites (test_contract.py and the rest) keep covering what only a real process
shows: the upload limits at the socket, the request log, graceful shutdown.
"""

from __future__ import annotations

import uuid

from fastapi.testclient import TestClient

from digit_predictor.api.deps import Services
from digit_predictor.db import Database, queries
from tests.api.conftest import MakeClient
from tests.api.drawings import blank_canvas_png, drawing_png


def test_a_prediction_is_stored_in_postgres(app_client: TestClient, db: Database) -> None:
    answer = app_client.post(
        "/v1/predictions",
        files={"image": ("d.png", drawing_png(7), "image/png")},
        data={"source": "in-process"},
    )
    assert answer.status_code == 201, answer.text
    body = answer.json()
    assert answer.headers["Location"] == f"/v1/predictions/{body['id']}"

    row = queries.get_prediction(db, body["id"])
    assert row.request_id == uuid.UUID(body["request_id"])
    assert (row.predicted_digit, row.source) == (body["digit"], "in-process")
    assert queries.get_image(db, body["id"]) == drawing_png(7)
    assert queries.count_predictions(db) == 1


def test_an_empty_drawing_is_refused_and_nothing_is_stored(
    app_client: TestClient, db: Database
) -> None:
    answer = app_client.post(
        "/v1/predictions", files={"image": ("d.png", blank_canvas_png(), "image/png")}
    )
    assert answer.status_code == 422
    assert "detail" in answer.json()
    assert queries.count_predictions(db) == 0


def test_an_unknown_prediction_is_404(app_client: TestClient) -> None:
    answer = app_client.get("/v1/predictions/987654321")
    assert answer.status_code == 404
    assert "987654321" in answer.json()["detail"]


def test_readiness_follows_the_database(
    app_for: MakeClient, live_services: Services, down_services: Services, database_url: str
) -> None:
    up = app_for(live_services).get("/readyz")
    assert up.status_code == 200 and up.json()["database"] == "up"

    down = app_for(down_services).get("/readyz")
    assert down.status_code == 503
    assert down.json()["database"] == "down"
    assert any(reason.startswith("database unavailable") for reason in down.json()["reasons"])


def test_with_the_database_down_reads_are_503_and_predictions_are_queued(
    app_for: MakeClient, down_services: Services
) -> None:
    client = app_for(down_services)
    listing = client.get("/v1/predictions")
    assert listing.status_code == 503
    assert listing.json()["detail"]

    queued_before = down_services.store.queued
    answer = client.post("/v1/predictions", files={"image": ("d.png", drawing_png(1), "image/png")})
    assert answer.status_code == 202, answer.text
    assert answer.json()["id"] is None and answer.json()["stored"] is False
    assert down_services.store.queued == queued_before + 1


def test_the_api_key_guards_v1_but_not_health(
    app_for: MakeClient, live_services: Services, database_url: str
) -> None:
    client = app_for(live_services, api_key="in-process-key-7c1e")
    assert client.get("/v1/predictions").status_code == 401
    assert client.get("/v1/predictions", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/predictions", headers={"X-API-Key": "in-process-key-7c1e"}).json() == {
        "items": [],
        "limit": 20,
        "offset": 0,
        "before": None,
        "next": None,
        "total": 0,
    }
    assert client.get("/healthz").status_code == 200
