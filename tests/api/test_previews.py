"""POST /v1/previews over HTTP against a real uvicorn and PostgreSQL: the same answer as
POST /v1/predictions, the same refusals, and nothing written, queued or counted."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import psycopg2
import pytest

from tests.api import drawings
from tests.servers import ApiServer, api_env, api_server

PREDICTIONS_COUNTER = re.compile(r'^digit_api_predictions_total\{digit="(\d)"\} (\S+)$', re.M)


def preview(client: httpx.Client, data: bytes, ctype: str = "image/png") -> httpx.Response:
    return client.post("/v1/previews", files={"image": ("d.png", data, ctype)})


def rows_in_table(database_url: str) -> int:
    """Counted straight from PostgreSQL, not through the data layer under test."""
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM predictions")
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return int(row[0])


def predictions_counted(client: httpx.Client) -> float:
    return sum(float(v) for _, v in PREDICTIONS_COUNTER.findall(client.get("/metrics").text))


@pytest.mark.parametrize("digit", [0, 1, 4, 7])
def test_preview_answers_what_a_prediction_would_and_stores_nothing(
    client: httpx.Client, database_url: str, digit: int
) -> None:
    png = drawings.drawing_png(digit)
    counted = predictions_counted(client)

    response = preview(client, png)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stored"] is False
    assert not {"id", "request_id", "created_at"} & set(body)
    assert "location" not in response.headers
    assert rows_in_table(database_url) == 0
    assert predictions_counted(client) == counted
    assert client.get("/readyz").json()["queued_writes"] == 0

    # Pressing Predict afterwards stores the same answer, once.
    stored = client.post("/v1/predictions", files={"image": ("d.png", png, "image/png")})
    assert stored.status_code == 201, stored.text
    kept = stored.json()
    same = ("digit", "confidence", "probabilities", "is_digit", "ood_score", "model_version")
    for field in (*same, "model_input_png"):
        assert body[field] == kept[field], field
    assert rows_in_table(database_url) == 1
    assert predictions_counted(client) == counted + 1


@pytest.mark.parametrize(
    ("data", "ctype", "status", "says"),
    [
        (drawings.blank_canvas_png(), "image/png", 422, "draw a digit first"),
        (drawings.dot_png(), "image/png", 422, "only a dot"),
        (b"not an image at all", "image/png", 422, "not a PNG or JPEG"),
        (drawings.truncated(drawings.drawing_png(1)), "image/png", 422, "truncated"),
        (drawings.png_declaring(20_000, 20_000), "image/png", 422, "too many pixels"),
        (drawings.noise_png(700), "image/png", 413, "too many bytes"),
    ],
    ids=["blank", "dot", "garbage", "truncated", "huge-header", "too-large"],
)
def test_preview_refuses_what_a_prediction_refuses(
    client: httpx.Client,
    database_url: str,
    data: bytes,
    ctype: str,
    status: int,
    says: str,
) -> None:
    as_preview = preview(client, data, ctype)
    as_prediction = client.post("/v1/predictions", files={"image": ("d.png", data, ctype)})

    assert as_preview.status_code == as_prediction.status_code == status, as_preview.text
    assert says in as_preview.json()["detail"]
    assert as_preview.json()["detail"] == as_prediction.json()["detail"]
    assert rows_in_table(database_url) == 0
    assert client.get("/healthz").status_code == 200


def test_preview_wants_multipart(client: httpx.Client, database_url: str) -> None:
    response = client.post(
        "/v1/previews", content=drawings.drawing_png(1), headers={"content-type": "image/png"}
    )
    assert response.status_code == 415, response.text
    assert "multipart/form-data" in response.json()["detail"]
    missing = client.post("/v1/previews", files={"other": ("d.png", b"x", "image/png")})
    assert missing.status_code == 422 and missing.json()["detail"].startswith("image")
    assert client.get("/v1/previews").status_code == 405
    assert rows_in_table(database_url) == 0


def test_preview_works_without_a_database(model_path: Path) -> None:
    """It never touches PostgreSQL: with none reachable it still answers, and queues nothing."""
    nowhere = "postgresql://digits:unused-secret@127.0.0.1:9/digits"
    with api_server(api_env(nowhere, model_path, db_connect_timeout_s=1)) as api, api.client() as c:
        response = preview(c, drawings.drawing_png(7))
        assert response.status_code == 200, response.text
        assert response.json()["stored"] is False
        ready = c.get("/readyz").json()
        assert ready["database"] == "down" and ready["queued_writes"] == 0


def test_schema_documents_previews(api: ApiServer) -> None:
    with api.client() as c:
        operation = c.get("/openapi.json").json()["paths"]["/v1/previews"]["post"]
    assert {"200", "413", "415", "422"} <= set(operation["responses"])
    assert "201" not in operation["responses"]
    schema = operation["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/Preview"}
