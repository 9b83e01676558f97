"""API_KEY: when set, every /v1 call needs X-API-Key; operations endpoints never do."""

from __future__ import annotations

import pytest

from tests.api import drawings
from tests.api.conftest import API_KEY
from tests.servers import ApiServer

V1_CALLS = [
    ("GET", "/v1/predictions"),
    ("GET", "/v1/predictions/1"),
    ("GET", "/v1/predictions/1/image"),
    ("POST", "/v1/predictions/1/feedback"),
    ("GET", "/v1/stats"),
    ("GET", "/v1/model"),
]


@pytest.mark.parametrize(("method", "path"), V1_CALLS)
@pytest.mark.parametrize("key", [None, "", "wrong-key", API_KEY + "x"])
def test_v1_refuses_a_missing_or_wrong_key(
    keyed_api: ApiServer, method: str, path: str, key: str | None
) -> None:
    headers = {"X-API-Key": key} if key is not None else {}
    with keyed_api.client() as client:
        response = client.request(method, path, headers=headers, json={"true_digit": 1})
    assert response.status_code == 401, response.text
    assert "X-API-Key" in response.json()["detail"]


def test_upload_without_key_is_refused_and_not_stored(keyed_api: ApiServer) -> None:
    with keyed_api.client() as client:
        png = drawings.drawing_png(1)
        refused = client.post("/v1/predictions", files={"image": ("d.png", png, "image/png")})
        assert refused.status_code == 401
        with keyed_api.client(api_key=API_KEY) as authorised:
            assert authorised.get("/v1/predictions").json()["total"] == 0
            accepted = authorised.post(
                "/v1/predictions", files={"image": ("d.png", png, "image/png")}
            )
            assert accepted.status_code == 201, accepted.text
            assert authorised.get("/v1/model").status_code == 200


def test_operations_endpoints_need_no_key(keyed_api: ApiServer) -> None:
    with keyed_api.client() as client:
        for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
            assert client.get(path).status_code == 200, path


def test_schema_declares_the_key(keyed_api: ApiServer, api: ApiServer) -> None:
    with keyed_api.client() as client:
        schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["APIKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": schema["components"]["securitySchemes"]["APIKeyHeader"]["description"],
    }
    assert schema["paths"]["/v1/stats"]["get"]["security"] == [{"APIKeyHeader": []}]
    assert "security" not in schema["paths"]["/healthz"]["get"]
    # Without API_KEY the schema does not claim a key is needed.
    with api.client() as open_client:
        open_schema = open_client.get("/openapi.json").json()
    assert "security" not in open_schema["paths"]["/v1/stats"]["get"]
