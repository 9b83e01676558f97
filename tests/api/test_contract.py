"""The contract of issue 4, field by field, over HTTP against a real uvicorn and PostgreSQL."""

from __future__ import annotations

import base64
import io
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.db import Database, queries
from digit_predictor.ml.synthetic_digits import pen_digit, to_png
from tests.api import drawings
from tests.servers import ApiServer, api_env, api_server, wait_for


def post_drawing(
    client: httpx.Client,
    data: bytes,
    *,
    source: str | None = "web",
    filename: str = "drawing.png",
    ctype: str = "image/png",
) -> httpx.Response:
    form = {"source": source} if source is not None else None
    return client.post("/v1/predictions", files={"image": (filename, data, ctype)}, data=form)


def test_post_prediction_answers_every_field_and_stores_the_drawing(
    client: httpx.Client, db: Database, model_path: Path
) -> None:
    png = drawings.drawing_png(1)
    before = datetime.now(UTC)
    response = post_drawing(client, png)
    after = datetime.now(UTC)

    assert response.status_code == 201, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) >= {
        "id",
        "request_id",
        "digit",
        "confidence",
        "probabilities",
        "model_version",
        "created_at",
        "latency_ms",
    }
    assert isinstance(body["id"], int) and body["id"] >= 1
    assert response.headers["location"] == f"/v1/predictions/{body['id']}"
    request_id = uuid.UUID(body["request_id"])
    assert response.headers["x-request-id"] == str(request_id)

    probs = body["probabilities"]
    assert len(probs) == 10 and all(isinstance(p, float) and 0.0 <= p <= 1.0 for p in probs)
    assert math.isclose(sum(probs), 1.0, abs_tol=1e-9)
    assert body["digit"] == max(range(10), key=lambda d: probs[d])
    assert body["confidence"] == probs[body["digit"]]

    card = json.loads((model_path.parent / "model_card.json").read_text())
    assert body["model_version"] == card["version"]
    created = datetime.fromisoformat(body["created_at"])
    assert created.tzinfo is not None
    assert before - timedelta(seconds=1) <= created <= after + timedelta(seconds=1)
    assert 0 < body["latency_ms"] < 10_000
    assert body["source"] == "web"
    assert body["stored"] is True
    seen = Image.open(io.BytesIO(base64.b64decode(body["model_input_png"])))
    assert seen.size == (28, 28) and seen.mode == "L"

    # The row: every field as answered, the image byte for byte as submitted.
    row = queries.get_prediction(db, body["id"])
    assert row.request_id == request_id
    assert row.predicted_digit == body["digit"]
    assert row.confidence == body["confidence"]
    assert row.probabilities == probs
    assert row.model_version == body["model_version"]
    assert row.created_at == created
    assert row.latency_ms == pytest.approx(body["latency_ms"])
    assert row.source == "web"
    assert row.true_digit is None
    assert queries.get_image(db, body["id"]) == png
    assert queries.count_predictions(db) == 1


def test_jpeg_is_accepted_and_source_is_optional(client: httpx.Client, db: Database) -> None:
    jpeg = drawings.drawing_jpeg(7)
    response = post_drawing(client, jpeg, source=None, filename="d.jpg", ctype="image/jpeg")
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["source"] is None
    assert queries.get_image(db, body["id"]) == jpeg
    assert queries.get_prediction(db, body["id"]).source is None


def test_declared_part_type_does_not_matter_only_the_bytes(client: httpx.Client) -> None:
    response = post_drawing(client, drawings.drawing_png(4), ctype="application/octet-stream")
    assert response.status_code == 201, response.text


def test_list_is_newest_first_paged_and_without_images(client: httpx.Client) -> None:
    ids = [post_drawing(client, drawings.drawing_png(d)).json()["id"] for d in (0, 1, 4, 7)]

    page = client.get("/v1/predictions", params={"limit": 3})
    assert page.status_code == 200
    body = page.json()
    assert body["total"] == 4 and body["limit"] == 3 and body["offset"] == 0
    assert [item["id"] for item in body["items"]] == ids[::-1][:3]
    item = body["items"][0]
    assert "image" not in json.dumps(item)
    assert set(item) == {
        "id",
        "request_id",
        "digit",
        "confidence",
        "probabilities",
        "model_version",
        "created_at",
        "latency_ms",
        "source",
        "true_digit",
        "feedback_at",
        "correct",
        "is_digit",
        "ood_score",
    }

    rest = client.get("/v1/predictions", params={"limit": 3, "offset": 3}).json()
    assert [item["id"] for item in rest["items"]] == [ids[0]]
    assert rest["next"] is None  # offset pages carry no cursor
    default = client.get("/v1/predictions").json()
    assert default["limit"] == 20 and len(default["items"]) == 4
    assert default["next"] is None and default["before"] is None


def test_list_pages_with_a_cursor(client: httpx.Client) -> None:
    ids = [post_drawing(client, drawings.drawing_png(d)).json()["id"] for d in (0, 1, 4, 7, 1)]

    first = client.get("/v1/predictions", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == [ids[4], ids[3]]
    assert first["next"] == ids[3] and first["total"] == 5
    second = client.get("/v1/predictions", params={"limit": 2, "before": first["next"]}).json()
    assert [item["id"] for item in second["items"]] == [ids[2], ids[1]]
    assert second["before"] == ids[3] and second["offset"] == 0
    last = client.get("/v1/predictions", params={"limit": 2, "before": second["next"]}).json()
    assert [item["id"] for item in last["items"]] == [ids[0]]
    assert last["next"] is None and last["total"] == 5


@pytest.mark.parametrize(
    ("params", "status", "says"),
    [
        ({"before": 999_999}, 404, "start again without `before`"),
        ({"before": 0}, 422, "before"),
        ({"before": "abc"}, 422, "before"),
        ({"before": 2**63}, 422, "before"),
        ({"before": 1, "offset": 5}, 422, "either `before` or `offset`"),
    ],
)
def test_a_bad_cursor_is_a_clear_4xx(
    client: httpx.Client, params: dict[str, int | str], status: int, says: str
) -> None:
    post_drawing(client, drawings.drawing_png(4))
    response = client.get("/v1/predictions", params=params)
    assert response.status_code == status, response.text
    assert says in response.text


def test_a_dropped_drawing_answers_410_and_the_row_stays(
    client: httpx.Client, db: Database
) -> None:
    created = post_drawing(client, drawings.drawing_png(7)).json()
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE predictions SET image_data = NULL WHERE id = %s", (created["id"],))
    image = client.get(f"/v1/predictions/{created['id']}/image")
    assert image.status_code == 410 and "retention" in image.json()["detail"]
    assert client.get(f"/v1/predictions/{created['id']}").status_code == 200


def test_one_prediction_and_its_image(client: httpx.Client) -> None:
    png = drawings.drawing_png(7)
    created = post_drawing(client, png).json()

    one = client.get(f"/v1/predictions/{created['id']}")
    assert one.status_code == 200
    assert one.json()["request_id"] == created["request_id"]

    image = client.get(f"/v1/predictions/{created['id']}/image")
    assert image.status_code == 200
    assert image.headers["content-type"] == "image/png"
    assert image.headers["x-content-type-options"] == "nosniff"
    assert image.content == png

    jpeg = drawings.drawing_jpeg()
    jid = post_drawing(client, jpeg, ctype="image/jpeg").json()["id"]
    jimage = client.get(f"/v1/predictions/{jid}/image")
    assert jimage.headers["content-type"] == "image/jpeg" and jimage.content == jpeg


def test_feedback_round_trip(client: httpx.Client, db: Database) -> None:
    created = post_drawing(client, drawings.drawing_png(1)).json()
    wrong = (created["digit"] + 1) % 10

    response = client.post(f"/v1/predictions/{created['id']}/feedback", json={"true_digit": wrong})
    assert response.status_code == 200, response.text
    record = response.json()
    assert record["id"] == created["id"]
    assert record["true_digit"] == wrong
    assert record["correct"] is False
    assert datetime.fromisoformat(record["feedback_at"]).tzinfo is not None

    # A later answer replaces the earlier one.
    again = client.post(
        f"/v1/predictions/{created['id']}/feedback", json={"true_digit": created["digit"]}
    )
    assert again.status_code == 200 and again.json()["correct"] is True
    assert queries.get_prediction(db, created["id"]).true_digit == created["digit"]
    listed = client.get("/v1/predictions").json()["items"][0]
    assert listed["true_digit"] == created["digit"] and listed["correct"] is True


def test_stats_and_high_score_after_a_few_predictions(client: httpx.Client) -> None:
    empty = client.get("/v1/stats")
    assert empty.status_code == 200
    assert empty.json()["total_predictions"] == 0
    assert empty.json()["high_score_today"] is None

    made = [post_drawing(client, drawings.drawing_png(d)).json() for d in (0, 1, 4, 7, 1)]
    best = max(made, key=lambda p: p["confidence"])
    first, second = made[0], made[1]
    client.post(f"/v1/predictions/{first['id']}/feedback", json={"true_digit": first["digit"]})
    other = (second["digit"] + 3) % 10
    client.post(f"/v1/predictions/{second['id']}/feedback", json={"true_digit": other})

    stats = client.get("/v1/stats").json()
    assert stats["total_predictions"] == 5
    assert stats["feedback_count"] == 2
    assert stats["correct_count"] == 1
    assert stats["accuracy"] == 0.5
    assert stats["mean_confidence"] == pytest.approx(sum(p["confidence"] for p in made) / 5)
    assert len(stats["per_digit"]) == 10 and [d["digit"] for d in stats["per_digit"]] == list(
        range(10)
    )
    assert stats["confusion"][first["digit"]][first["digit"]] >= 1
    assert stats["confusion"][other][second["digit"]] == 1
    assert sum(day["count"] for day in stats["per_day"]) == 5
    assert stats["time_zone"] == "America/New_York"
    [version] = stats["per_version"]
    assert (version["predictions"], version["feedback_count"], version["correct"]) == (5, 2, 1)
    assert version["model_version"] == first["model_version"] and version["accuracy"] == 0.5
    bins = stats["reliability"]
    assert len(bins) == 15 and bins[0]["lower"] == 0 and bins[-1]["upper"] == 1
    assert sum(b["feedback_count"] for b in bins) == 2
    assert sum(b["correct"] for b in bins) == 1
    assert 0 <= stats["expected_calibration_error"] <= 1
    assert stats["high_score_today"]["id"] == best["id"]
    assert stats["high_score_today"]["confidence"] == best["confidence"]


def test_model_card(client: httpx.Client, model_path: Path) -> None:
    response = client.get("/v1/model")
    assert response.status_code == 200
    card = json.loads((model_path.parent / "model_card.json").read_text())
    assert response.json() == card


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "ready",
        "model_loaded": True,
        "model_version": "test-model-1",
        "database": "up",
        "queued_writes": 0,
        "reasons": [],
    }


def test_metrics_count_requests_digits_and_the_model(client: httpx.Client) -> None:
    digit = post_drawing(client, drawings.drawing_png(1)).json()["digit"]
    before = client.get("/metrics").text
    post_drawing(client, drawings.drawing_png(1))
    post_drawing(client, drawings.blank_canvas_png())
    after = client.get("/metrics")
    assert after.status_code == 200
    assert after.headers["content-type"].startswith("text/plain")
    text = after.text

    requests_201 = 'digit_api_requests_total{method="POST",route="/v1/predictions",status="201"}'
    requests_422 = requests_201.replace('"201"', '"422"')
    assert sample(text, requests_201) == sample(before, requests_201) + 1
    assert sample(text, requests_422) == sample(before, requests_422) + 1
    by_digit = f'digit_api_predictions_total{{digit="{digit}"}}'
    assert sample(text, by_digit) == sample(before, by_digit) + 1
    assert 'digit_api_model_info{version="test-model-1"} 1.0' in text
    assert (
        'digit_api_request_duration_seconds_count{method="POST",route="/v1/predictions",'
        'status="201"}'
    ) in text
    assert sample(text, "digit_api_db_write_queue_length") == 0
    assert sample(text, "digit_api_database_up") == 1
    assert 'digit_api_db_write_failures_total{reason="unavailable"}' in text
    assert "digit_api_db_write_queue_full_total" in text
    assert sample(text, 'digit_api_db_writes_total{path="batch"}') >= 2
    assert "digit_api_db_write_batch_rows_bucket" in text


def sample(text: str, name: str) -> float:
    """The value of one series (`name` with its labels, as printed) in Prometheus text."""
    for line in text.splitlines():
        series, _, value = line.rpartition(" ")
        if series == name:
            return float(value)
    return 0.0


def test_one_json_log_line_per_request(api_server: ApiServer, client: httpx.Client) -> None:
    response = post_drawing(client, drawings.drawing_png(1))
    request_id = response.headers["x-request-id"]
    client.get("/v1/predictions/999999")

    def lines_of_request() -> list[dict[str, Any]]:
        return [
            r
            for r in api_server.log_records()
            if r.get("msg") == "request" and r.get("request_id") == request_id
        ]

    # The line is written as the answer leaves: it may reach the file a moment later.
    wait_for(lambda: bool(lines_of_request()), timeout_s=5)
    lines = lines_of_request()
    assert len(lines) == 1
    line = lines[0]
    assert line["route"] == "/v1/predictions" and line["method"] == "POST"
    assert line["status"] == 201 and line["latency_ms"] > 0
    refused = [
        r
        for r in api_server.log_records()
        if r.get("status") == 404 and r.get("route") == "/v1/predictions/{prediction_id}"
    ]
    assert refused and "no prediction with id 999999" in refused[-1]["error"]


def test_unknown_paths_share_one_metrics_label(client: httpx.Client) -> None:
    for i in range(3):
        assert client.get(f"/no/such/path/{i}").status_code == 404
    text = client.get("/metrics").text
    assert "/no/such/path" not in text
    assert 'route="<unmatched>"' in text


@pytest.mark.skipif(not DEFAULT_MODEL_PATH.exists(), reason="no shipped model in model/saved_model")
def test_the_shipped_model_reads_canvas_drawings(own_database_url: str) -> None:
    # Its own database: this api registers the shipped model as champion, and the session's
    # apis (untrained test model) must not swap to it.
    database_url = own_database_url
    rng = np.random.default_rng(7)
    samples = [(d, to_png(pen_digit(d, rng), "alpha")) for d in list(range(10)) * 2]
    card = json.loads((DEFAULT_MODEL_PATH.parent / "model_card.json").read_text())
    with api_server(api_env(database_url, DEFAULT_MODEL_PATH)) as api, api.client() as http:
        assert http.get("/v1/model").json()["version"] == card["version"]
        answers = [post_drawing(http, png).json()["digit"] for _, png in samples]
    correct = sum(answer == digit for (digit, _), answer in zip(samples, answers, strict=True))
    assert correct >= 16, answers
