"""Every client mistake: a 4xx whose JSON `detail` says what to fix, and no row written."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from digit_predictor.db import Database, queries
from tests.api import drawings

PNG = "image/png"


@dataclass(frozen=True)
class Case:
    status: int
    fragment: str  # must appear in `detail` (case-insensitive)
    send: Callable[[httpx.Client], httpx.Response]


def upload(data: bytes, *, ctype: str = PNG, source: str | None = None) -> Callable[..., Any]:
    def send(client: httpx.Client) -> httpx.Response:
        form = {"source": source} if source is not None else None
        return client.post("/v1/predictions", files={"image": ("d.png", data, ctype)}, data=form)

    return send


def raw(body: bytes, content_type: str | None) -> Callable[..., Any]:
    def send(client: httpx.Client) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        return client.post("/v1/predictions", content=body, headers=headers)

    return send


def multipart(body: bytes, boundary: str = "XyZ") -> Callable[..., Any]:
    return raw(body, f"multipart/form-data; boundary={boundary}")


def part(name: str, data: bytes, filename: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
    return f"--XyZ\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


PNG_BYTES = drawings.drawing_png(1)
JPEG_BYTES = drawings.drawing_jpeg(7)

UPLOAD_CASES: dict[str, Case] = {
    "no image field": Case(
        422,
        "image",
        lambda c: c.post(
            "/v1/predictions", data={"source": "web"}, files={"other": ("x.png", PNG_BYTES)}
        ),
    ),
    "empty multipart body": Case(422, "image", multipart(b"--XyZ--\r\n")),
    "json body": Case(415, "multipart/form-data", raw(b'{"image": "iVBOR"}', "application/json")),
    "urlencoded form": Case(
        415, "multipart/form-data", raw(b"image=abc", "application/x-www-form-urlencoded")
    ),
    "raw png, no content type": Case(415, "multipart/form-data", raw(PNG_BYTES, None)),
    "raw png as image/png body": Case(415, "multipart/form-data", raw(PNG_BYTES, PNG)),
    "image sent as a text field": Case(
        422, "image", multipart(part("image", b"hello") + b"--XyZ--\r\n")
    ),
    "empty file": Case(422, "empty", upload(b"")),
    "plain text": Case(422, "not a png or jpeg", upload(b"this is not an image at all")),
    "svg": Case(422, "not a png or jpeg", upload(b'<svg xmlns="http://www.w3.org/2000/svg"/>')),
    "gif": Case(422, "not a png or jpeg", upload(drawings.other_format("GIF"))),
    "bmp": Case(422, "not a png or jpeg", upload(drawings.other_format("BMP"))),
    "tiff": Case(422, "not a png or jpeg", upload(drawings.other_format("TIFF"))),
    "truncated png": Case(422, "truncated", upload(drawings.truncated(PNG_BYTES))),
    "truncated jpeg": Case(422, "truncated", upload(drawings.truncated(JPEG_BYTES))),
    "png signature only": Case(422, "png", upload(PNG_BYTES[:8])),
    "corrupt png data": Case(422, "corrupt", upload(drawings.corrupt_png())),
    "decompression bomb header": Case(
        422, "too many pixels", upload(drawings.png_declaring(100_000, 100_000))
    ),
    "too wide": Case(422, "too many pixels", upload(drawings.png_declaring(4000, 20))),
    "too many bytes": Case(413, "too many bytes", upload(drawings.noise_png(620))),
    "image one byte over the limit": Case(
        413, "too many bytes", upload(PNG_BYTES[:8] + b"\0" * (1024 * 1024 - 7))
    ),
    "blank canvas": Case(422, "draw a digit first", upload(drawings.blank_canvas_png())),
    "blank white page": Case(422, "draw a digit first", upload(drawings.blank_white_png())),
    "a single dot": Case(422, "draw a digit first", upload(drawings.dot_png())),
    "source too long": Case(422, "source", upload(PNG_BYTES, source="w" * 65)),
    "source with a control character": Case(422, "source", upload(PNG_BYTES, source="we\x00b")),
    "source that is broken UTF-8": Case(
        422,
        "source",
        multipart(
            part("image", PNG_BYTES, "d.png") + part("source", b"\xed\xa0\x80") + b"--XyZ--\r\n"
        ),
    ),
    "two image files": Case(
        400,
        "files",
        multipart(
            part("image", PNG_BYTES, "a.png") + part("image", PNG_BYTES, "b.png") + b"--XyZ--\r\n"
        ),
    ),
    "multipart without boundary": Case(400, "boundary", raw(PNG_BYTES, "multipart/form-data")),
}


@pytest.mark.parametrize("name", list(UPLOAD_CASES))
def test_bad_upload_is_refused_with_a_useful_message(
    name: str, client: httpx.Client, db: Database
) -> None:
    case = UPLOAD_CASES[name]
    response = case.send(client)
    assert response.status_code == case.status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and len(detail) > 10
    assert case.fragment in detail.lower(), detail
    assert response.json()["request_id"] == response.headers["x-request-id"]
    assert queries.count_predictions(db) == 0
    assert client.get("/healthz").status_code == 200


FEEDBACK_BODIES: dict[str, Any] = {
    "ten": {"true_digit": 10},
    "negative": {"true_digit": -1},
    "string digit": {"true_digit": "5"},
    "float": {"true_digit": 5.5},
    "float with zero fraction": {"true_digit": 5.0},
    "boolean": {"true_digit": True},
    "null": {"true_digit": None},
    "missing": {},
    "extra field": {"true_digit": 3, "digit": 4},
    "array": [3],
    "bare number": 3,
}


@pytest.mark.parametrize("name", list(FEEDBACK_BODIES))
def test_bad_label_is_refused(name: str, client: httpx.Client, db: Database) -> None:
    created = client.post("/v1/predictions", files={"image": ("d.png", PNG_BYTES, PNG)}).json()
    response = client.post(f"/v1/predictions/{created['id']}/feedback", json=FEEDBACK_BODIES[name])
    assert response.status_code == 422, response.text
    assert "true_digit" in response.json()["detail"]
    assert "0 to 9" in response.json()["detail"]
    assert queries.get_prediction(db, created["id"]).true_digit is None


def test_feedback_that_is_not_json(client: httpx.Client, db: Database) -> None:
    created = client.post("/v1/predictions", files={"image": ("d.png", PNG_BYTES, PNG)}).json()
    # The last one is not even text: FastAPI's own answer would be a 400 "error parsing the body".
    bodies = (
        (b"{true_digit: 3", "application/json"),
        (b"3", "text/plain"),
        (b"\xff\xfe<\x9dS\xccDW", "application/json"),
    )
    for body, ctype in bodies:
        response = client.post(
            f"/v1/predictions/{created['id']}/feedback",
            content=body,
            headers={"content-type": ctype},
        )
        assert response.status_code == 422, response.text
        assert "true_digit" in response.json()["detail"]
    assert queries.get_prediction(db, created["id"]).true_digit is None


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "fragment"),
    [
        ("POST", "/v1/predictions/424242/feedback", {"true_digit": 3}, 404, "no prediction"),
        ("GET", "/v1/predictions/424242", None, 404, "no prediction"),
        ("GET", "/v1/predictions/424242/image", None, 404, "no prediction"),
        ("GET", "/v1/predictions/abc", None, 422, "prediction_id"),
        ("GET", "/v1/predictions/0/image", None, 422, "prediction_id"),
        ("GET", f"/v1/predictions/{2**64}/image", None, 422, "prediction_id"),
        ("POST", "/v1/predictions/-5/feedback", {"true_digit": 3}, 422, "prediction_id"),
        ("GET", "/v1/predictions?limit=0", None, 422, "limit"),
        ("GET", "/v1/predictions?limit=101", None, 422, "limit"),
        ("GET", "/v1/predictions?limit=ten", None, 422, "limit"),
        ("GET", "/v1/predictions?offset=-1", None, 422, "offset"),
    ],
)
def test_unknown_ids_and_bad_parameters(
    method: str, path: str, body: Any, status: int, fragment: str, client: httpx.Client
) -> None:
    response = client.request(method, path, json=body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["detail"]
