"""GET /v1/predictions/{id}/explanation[/overlay] over HTTP against a real uvicorn and PostgreSQL.

The api here serves untrained (seeded) weights: the tests check what holds for any model (the
numbers' shape, the method's own invariants, agreement with what was served), not that the map
looks sensible; tests/ml/test_explain.py checks the method on models whose answer is known.
"""

from __future__ import annotations

import base64
import io
import math
from contextlib import closing
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from digit_predictor.db import Database, queries, registry
from digit_predictor.ml.models import DEFAULT_ARCHITECTURE, build_model
from tests.api import drawings
from tests.servers import api_env, api_server, wait_for


def predict(client: httpx.Client, digit: int = 7) -> dict[str, Any]:
    response = client.post(
        "/v1/predictions",
        files={"image": ("d.png", drawings.drawing_png(digit), "image/png")},
        data={"source": "test"},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_explanation_of_the_predicted_digit(client: httpx.Client, db: Database) -> None:
    served = predict(client, 7)
    before = queries.get_prediction(db, served["id"])

    response = client.get(f"/v1/predictions/{served['id']}/explanation")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["prediction_id"] == served["id"]
    assert body["digit"] == body["predicted_digit"] == served["digit"]
    assert (body["method"], body["baseline"]) == ("integrated_gradients", "black")
    assert body["steps"] >= 8
    assert body["model_version"] == served["model_version"]
    attributions = np.array(body["attributions"], dtype=np.float64)
    assert attributions.shape == (28, 28) and np.isfinite(attributions).all()
    assert np.abs(attributions).sum() > 0

    # The same preprocessing as serving: the same 28x28 input, the same probability.
    model_input = png_pixels(base64.b64decode(body["model_input_png"]))
    np.testing.assert_array_equal(
        model_input, png_pixels(base64.b64decode(served["model_input_png"]))
    )
    assert body["probability"] == pytest.approx(served["confidence"], abs=1e-5)

    # The method's invariants: no ink, no attribution (black baseline); completeness as reported.
    assert (attributions[model_input == 0] == 0).all()
    assert (attributions[model_input > 0] != 0).any()
    assert attributions.sum() - (body["logit"] - body["baseline_logit"]) == pytest.approx(
        body["convergence_delta"], abs=1e-6
    )
    assert body["latency_ms"] > 0

    # Explaining reads; it changes nothing.
    assert queries.get_prediction(db, served["id"]) == before
    assert queries.count_predictions(db) == 1


def test_explanation_of_another_digit(client: httpx.Client) -> None:
    served = predict(client, 1)
    other = (served["digit"] + 3) % 10

    response = client.get(f"/v1/predictions/{served['id']}/explanation", params={"digit": other})

    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["digit"], body["predicted_digit"]) == (other, served["digit"])
    assert body["probability"] == pytest.approx(served["probabilities"][other], abs=1e-5)
    default = client.get(f"/v1/predictions/{served['id']}/explanation").json()
    assert body["attributions"] != default["attributions"]
    assert body["logit"] != default["logit"]


def test_overlay_is_a_png_of_the_input_at_the_asked_scale(client: httpx.Client) -> None:
    served = predict(client, 4)
    url = f"/v1/predictions/{served['id']}/explanation/overlay"

    default = client.get(url)
    assert default.status_code == 200, default.text
    assert default.headers["content-type"] == "image/png"
    assert default.headers["x-explained-digit"] == str(served["digit"])
    picture = Image.open(io.BytesIO(default.content))
    assert picture.format == "PNG" and picture.mode == "RGB" and picture.size == (224, 224)

    other = (served["digit"] + 1) % 10
    small = client.get(url, params={"digit": other, "scale": 1})
    assert small.status_code == 200 and small.headers["x-explained-digit"] == str(other)
    pixels = png_pixels(small.content).astype(int)
    assert pixels.shape == (28, 28, 3)
    # Coloured where the model looked (red or blue dominate), grey (or black) far from the ink.
    model_input = png_pixels(base64.b64decode(served["model_input_png"]))
    colourful = np.abs(pixels[..., 0] - pixels[..., 2]) > 40
    assert colourful[model_input > 0].mean() > 0.5
    far = np.ones((28, 28), dtype=bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            far &= np.roll(model_input, (dy, dx), axis=(0, 1)) == 0
    assert (pixels[far] == 0).all()


@pytest.mark.parametrize("suffix", ["", "/overlay"])
def test_unknown_prediction_is_404(client: httpx.Client, suffix: str) -> None:
    predict(client)
    response = client.get(f"/v1/predictions/987654/explanation{suffix}")
    assert response.status_code == 404, response.text
    body = response.json()
    assert "987654" in body["detail"] and body["request_id"]


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"digit": 10}, "digit"),
        ({"digit": -1}, "digit"),
        ({"digit": "seven"}, "digit"),
        ({"digit": 2.5}, "digit"),
        ({"scale": 0}, "scale"),
        ({"scale": 21}, "scale"),
    ],
)
def test_out_of_range_parameters_are_422(
    client: httpx.Client, params: dict[str, Any], field: str
) -> None:
    served = predict(client)
    suffix = "/overlay" if field == "scale" else ""
    response = client.get(f"/v1/predictions/{served['id']}/explanation{suffix}", params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"].startswith(field)


def test_bad_id_is_422(client: httpx.Client) -> None:
    for bad in ("0", "-3", "abc", str(2**63)):
        response = client.get(f"/v1/predictions/{bad}/explanation")
        assert response.status_code == 422, (bad, response.text)


@pytest.mark.parametrize("suffix", ["", "/overlay"])
def test_a_drawing_dropped_by_retention_is_410(
    client: httpx.Client, db: Database, suffix: str
) -> None:
    served = predict(client, 7)
    with db.connection() as conn, conn.cursor() as cur:  # what the prune command does to a row
        cur.execute("UPDATE predictions SET image_data = NULL WHERE id = %s", (served["id"],))
    response = client.get(f"/v1/predictions/{served['id']}/explanation{suffix}")
    assert response.status_code == 410, response.text
    assert queries.get_prediction(db, served["id"]).predicted_digit == served["digit"]


def test_a_stored_drawing_that_no_longer_preprocesses_is_409(
    client: httpx.Client, db: Database
) -> None:
    # Only POST /v1/predictions writes rows and it preprocesses first; a row written otherwise
    # (an import, a restore from elsewhere) may hold a drawing the api would refuse today.
    row = queries.insert_prediction(
        db,
        queries.NewPrediction(
            predicted_digit=3,
            confidence=0.5,
            probabilities=[0.5 if d == 3 else 0.5 / 9 for d in range(10)],
            image_data=drawings.blank_canvas_png(),
            model_version="imported",
        ),
    )
    response = client.get(f"/v1/predictions/{row.id}/explanation")
    assert response.status_code == 409, response.text
    assert "draw a digit first" in response.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_schema_documents_both_routes_and_their_errors(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    numbers = paths["/v1/predictions/{prediction_id}/explanation"]["get"]
    picture = paths["/v1/predictions/{prediction_id}/explanation/overlay"]["get"]
    for operation in (numbers, picture):
        assert {"200", "404", "409", "422", "503"} <= set(operation["responses"])
        names = {p["name"] for p in operation["parameters"]}
        assert {"prediction_id", "digit"} <= names
    assert "image/png" in picture["responses"]["200"]["content"]
    assert numbers["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Explanation"
    }


def test_concurrent_explanations_and_predictions_agree_with_serial_ones(
    client: httpx.Client,
) -> None:
    """The model serves predictions while gradients run through it in other threads."""
    from concurrent.futures import ThreadPoolExecutor

    served = predict(client, 0)
    url = f"/v1/predictions/{served['id']}/explanation"
    serial = client.get(url).json()["attributions"]

    def explain_once(_: int) -> list[list[float]]:
        result: list[list[float]] = client.get(url).json()["attributions"]
        return result

    def predict_once(_: int) -> float:
        confidence: float = predict(client, 0)["confidence"]
        return confidence

    with ThreadPoolExecutor(max_workers=6) as pool:
        maps = list(pool.map(explain_once, range(6)))
        confidences = list(pool.map(predict_once, range(6)))
    for attributions in maps:
        assert np.allclose(attributions, serial, atol=1e-9)
    assert all(math.isclose(c, served["confidence"], abs_tol=1e-9) for c in confidences)


def _seeded_weights(seed: int) -> bytes:
    torch.manual_seed(seed)
    out = io.BytesIO()
    torch.save(build_model(DEFAULT_ARCHITECTURE).state_dict(), out)
    return out.getvalue()


@pytest.mark.slow
def test_previews_and_explanations_follow_a_promotion(
    own_database_url: str, model_path: Path
) -> None:
    """After a live swap, previews report and explanations use the model that answers now."""
    # Its own database: the promoted model must not become the champion other apis swap to.
    env = api_env(own_database_url, model_path, model_check_interval_s=1)
    with (
        api_server(env, ready_path="/readyz") as api,
        api.client() as client,
        closing(Database(own_database_url, max_size=2)) as db,
    ):
        served = predict(client, 7)
        url = f"/v1/predictions/{served['id']}/explanation"
        before = client.get(url).json()
        assert before["model_version"] == served["model_version"]
        registry.register(
            db,
            version="promoted-1",
            parent_version=served["model_version"],
            arch=DEFAULT_ARCHITECTURE,
            weights=_seeded_weights(11),
            card={"version": "promoted-1", "gate": {"passed": True, "rows": []}},
        )
        registry.promote(db, "promoted-1", reason="test")

        def preview_version() -> str:
            response = client.post(
                "/v1/previews",
                files={"image": ("d.png", drawings.drawing_png(7), "image/png")},
            )
            assert response.status_code == 200, response.text
            return str(response.json()["model_version"])

        wait_for(lambda: preview_version() == "promoted-1", timeout_s=10)
        after = client.get(url).json()
        assert after["model_version"] == "promoted-1"
        # Other weights, so another map: the stored drawing was explained by the new model.
        assert not np.allclose(after["attributions"], before["attributions"])
