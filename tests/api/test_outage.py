"""PostgreSQL goes away and comes back: the api keeps answering, queues rows, writes them later."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from digit_predictor.db import Database, queries
from tests.api import drawings
from tests.api.conftest import SMALL_QUEUE
from tests.api.test_contract import sample
from tests.pg import PostgresServer
from tests.servers import CLEAN_EXIT, ApiServer, api_env, api_server, wait_for

pytestmark = pytest.mark.slow


def post(client: httpx.Client, data: bytes) -> httpx.Response:
    return client.post("/v1/predictions", files={"image": ("d.png", data, "image/png")})


@contextmanager
def database_down(pg_server: PostgresServer) -> Iterator[None]:
    pg_server.stop()
    try:
        yield
    finally:
        pg_server.start()


def test_outage_queues_predictions_and_writes_them_when_the_database_returns(
    api: ApiServer, client: httpx.Client, pg_server: PostgresServer, db: Database
) -> None:
    first = post(client, drawings.drawing_png(1))
    assert first.status_code == 201
    assert client.get("/readyz").status_code == 200
    images = [drawings.drawing_png(d, shift=(i, 0)) for i, d in enumerate((0, 1, 4, 7, 1))]

    with database_down(pg_server):
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["database"] == "down"
        assert ready.json()["model_loaded"] is True
        assert any("database" in reason for reason in ready.json()["reasons"])

        queued = [post(client, png) for png in images]
        for response in queued:
            assert response.status_code == 202, response.text
            body = response.json()
            assert body["id"] is None and body["stored"] is False
            assert body["request_id"] and 0 <= body["digit"] <= 9
            assert "location" not in response.headers

        assert client.get("/readyz").json()["queued_writes"] == len(images)
        metrics = client.get("/metrics").text
        assert sample(metrics, "digit_api_db_write_queue_length") == len(images)
        assert sample(metrics, "digit_api_database_up") == 0
        assert sample(metrics, "digit_api_db_writes_queued_total") >= len(images)

        # Reads and feedback need the database: 503 with a reason, never a 500.
        for response in (
            client.get("/v1/predictions"),
            client.get("/v1/stats"),
            client.post(f"/v1/predictions/{first.json()['id']}/feedback", json={"true_digit": 1}),
        ):
            assert response.status_code == 503, response.text
            assert "database" in response.json()["detail"]
            assert response.headers["retry-after"]
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/model").status_code == 200

    wait_for(lambda: client.get("/readyz").json()["queued_writes"] == 0)
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["database"] == "up"

    # Every queued row is there exactly once, with the image as submitted and the answered values.
    assert queries.count_predictions(db) == 1 + len(images)
    rows = {str(r.request_id): r for r in queries.recent_predictions(db, limit=100)}
    for response, png in zip(queued, images, strict=True):
        body = response.json()
        row = rows[body["request_id"]]
        assert row.predicted_digit == body["digit"]
        assert row.probabilities == body["probabilities"]
        assert row.created_at == datetime.fromisoformat(body["created_at"])
        assert queries.get_image(db, row.id) == png
    metrics = client.get("/metrics").text
    assert sample(metrics, "digit_api_db_write_queue_length") == 0
    assert sample(metrics, 'digit_api_db_writes_total{path="batch"}') >= len(images)
    assert sample(metrics, "digit_api_db_writes_queued_total") == len(images)
    assert sample(metrics, "digit_api_database_up") == 1
    # After the outage, new predictions are stored directly again.
    assert post(client, drawings.drawing_png(7)).status_code == 201


def test_full_queue_refuses_with_503_logs_and_counts_it(
    small_api: ApiServer, pg_server: PostgresServer, db: Database
) -> None:
    with small_api.client() as client, database_down(pg_server):
        accepted = [post(client, drawings.drawing_png(1, shift=(i, 0))) for i in range(SMALL_QUEUE)]
        assert [r.status_code for r in accepted] == [202] * SMALL_QUEUE
        refused = post(client, drawings.drawing_png(4))
        assert refused.status_code == 503, refused.text
        assert "queue is full" in refused.json()["detail"]
        assert refused.headers["retry-after"]
        metrics = client.get("/metrics").text
        assert sample(metrics, "digit_api_db_write_queue_full_total") >= 1
        assert sample(metrics, "digit_api_db_write_queue_length") == SMALL_QUEUE
        assert sample(metrics, "digit_api_db_write_queue_capacity") == SMALL_QUEUE
        assert any(
            r.get("level") == "error" and "queue full" in r.get("msg", "")
            for r in small_api.log_records()
        )
    with small_api.client() as client:
        wait_for(lambda: client.get("/readyz").json()["queued_writes"] == 0)
    stored = {str(r.request_id) for r in queries.recent_predictions(db, limit=100)}
    assert stored == {r.json()["request_id"] for r in accepted}


def test_database_down_at_start_up_then_schema_and_rows_arrive(
    pg_server: PostgresServer, make_database: Callable[[], str], model_path: Path
) -> None:
    url = make_database()  # empty: not even migrated yet
    pg_server.stop()
    try:
        server = api_server(api_env(url, model_path, db_connect_timeout_s=1))
        api = server.__enter__()
    except BaseException:
        pg_server.start()
        raise
    try:
        with api.client() as client:
            assert client.get("/healthz").status_code == 200
            assert client.get("/readyz").status_code == 503
            queued = [post(client, drawings.drawing_png(d)) for d in (1, 7)]
            assert [r.status_code for r in queued] == [202, 202]
            pg_server.start()
            wait_for(lambda: client.get("/readyz").status_code == 200)
            wait_for(lambda: client.get("/readyz").json()["queued_writes"] == 0)
            listed = client.get("/v1/predictions").json()
        assert {item["request_id"] for item in listed["items"]} == {
            r.json()["request_id"] for r in queued
        }
    finally:
        if not pg_server_running(pg_server):
            pg_server.start()
        server.__exit__(None, None, None)
    check = Database(url)
    try:
        assert queries.count_predictions(check) == 2
    finally:
        check.close()


def pg_server_running(pg_server: PostgresServer) -> bool:
    try:
        Database(pg_server.admin_url, connect_timeout_s=1).ping()
    except Exception:
        return False
    return True


def test_graceful_stop_flushes_queued_rows(
    pg_server: PostgresServer, database_url: str, model_path: Path, db: Database
) -> None:
    with api_server(api_env(database_url, model_path)) as api:
        with api.client() as client, database_down(pg_server):
            queued = [post(client, drawings.drawing_png(d)) for d in (0, 4)]
            assert [r.status_code for r in queued] == [202, 202]
        # The database is back; stop at once, before the queue's backoff would retry.
        assert api.stop() in CLEAN_EXIT
        assert any(r.get("msg") == "api stopped" for r in api.log_records())
        assert not any("could not be written" in r.get("msg", "") for r in api.log_records())
    assert queries.count_predictions(db) == 2
