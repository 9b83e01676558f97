"""At least 50 hostile requests: each a 4xx with a JSON detail, no row changed, api still healthy.

The api's own bad-input cases (tests/api/test_bad_inputs.py) are replayed here beside the
nastier ones: SQL and script text in every field a client controls, absurd sizes and ids.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable

import httpx
import psycopg2
import pytest

from tests.api import drawings
from tests.api.test_bad_inputs import FEEDBACK_BODIES, UPLOAD_CASES, Case
from tests.servers import ApiServer

pytestmark = pytest.mark.reliability

Send = Callable[[httpx.Client, int], httpx.Response]

SQL = "1'; DROP TABLE predictions; --"
SCRIPT = "<script>alert('x')</script>"
PNG = drawings.drawing_png(7)
BLANK = drawings.blank_canvas_png()


def upload(image: bytes, *, ctype: str = "image/png", name: str = "d.png", **form: str) -> Send:
    return lambda c, _id: c.post(
        "/v1/predictions", files={"image": (name, image, ctype)}, data=form or None
    )


def body(content: bytes, content_type: str | None, path: str = "/v1/predictions") -> Send:
    headers = {"content-type": content_type} if content_type else {}
    return lambda c, _id: c.post(path, content=content, headers=headers)


def feedback(payload: object, *, raw: bytes | None = None, ctype: str = "application/json") -> Send:
    def send(c: httpx.Client, prediction_id: int) -> httpx.Response:
        content = raw if raw is not None else json.dumps(payload).encode()
        return c.post(
            f"/v1/predictions/{prediction_id}/feedback",
            content=content,
            headers={"content-type": ctype},
        )

    return send


def get(path: str, method: str = "GET") -> Send:
    return lambda c, _id: c.request(method, path)


def bad_upload(case: Case) -> Send:
    return lambda c, _id: case.send(c)


def hostile_corpus() -> dict[str, Send]:
    corpus: dict[str, Send] = {}
    for name, case in UPLOAD_CASES.items():
        corpus[f"upload: {name}"] = bad_upload(case)
    for name, payload in FEEDBACK_BODIES.items():
        corpus[f"label: {name}"] = feedback(payload)
    garbage = os.urandom(4096)
    corpus |= {
        "empty body, no content type": body(b"", None),
        "empty body, multipart": body(b"", "multipart/form-data; boundary=XyZ"),
        "garbage bytes as the image": upload(garbage),
        "garbage bytes as a multipart body": body(garbage, "multipart/form-data; boundary=XyZ"),
        "png with a 20000x20000 header": upload(drawings.png_declaring(20_000, 20_000)),
        "decompression bomb inside the side limit": upload(drawings.png_bomb(2040)),
        "10 MiB upload": upload(b"\x89PNG\r\n\x1a\n" + b"\0" * (10 * 1024 * 1024)),
        "text/plain body": body(PNG, "text/plain"),
        "octet-stream body": body(PNG, "application/octet-stream"),
        "multipart/mixed body": body(PNG, "multipart/mixed; boundary=XyZ"),
        "empty drawing": upload(BLANK),
        "sql in source, empty drawing": upload(BLANK, source=SQL),
        "script in source, truncated png": upload(drawings.truncated(PNG), source=SCRIPT),
        "sql in source, too long": upload(PNG, source=SQL * 3),
        "sql in the file name, garbage image": upload(garbage, name=f"{SQL}.png"),
        "script in the part content type": upload(garbage, ctype=SCRIPT),
        "label 10": feedback({"true_digit": 10}),
        "label -1": feedback({"true_digit": -1}),
        'label "7"': feedback({"true_digit": "7"}),
        "label 7.5": feedback({"true_digit": 7.5}),
        "label null": feedback({"true_digit": None}),
        "sql as the label": feedback({"true_digit": SQL}),
        "script as the label": feedback({"true_digit": SCRIPT}),
        "deeply nested label": feedback({"true_digit": [[[[[[[[[[7]]]]]]]]]]}),
        "label as xml": feedback(None, raw=b"<true_digit>7</true_digit>", ctype="application/xml"),
        "label as megabyte of spaces": feedback(None, raw=b" " * (1024 * 1024)),
        "sql in the path id": body(
            b'{"true_digit": 3}',
            "application/json",
            path="/v1/predictions/1;DROP TABLE predictions/feedback",
        ),
        "script in the path id": get(f"/v1/predictions/{SCRIPT}/image"),
        "unknown id, feedback": lambda c, _id: c.post(
            "/v1/predictions/987654321/feedback", json={"true_digit": 3}
        ),
        "unknown id, image": get("/v1/predictions/987654321/image"),
        "negative id": get("/v1/predictions/-1/image"),
        "id zero": get("/v1/predictions/0"),
        "id beyond bigint": get(f"/v1/predictions/{10**30}"),
        "sql in limit": get("/v1/predictions?limit=1;DROP TABLE predictions"),
        "script in offset": get(f"/v1/predictions?offset={SCRIPT}"),
        "huge limit": get(f"/v1/predictions?limit={10**30}"),
        "huge offset": get(f"/v1/predictions?offset={10**30}"),
        "8000-digit limit": get("/v1/predictions?limit=" + "9" * 8000),
        "delete a prediction": get("/v1/predictions/1", method="DELETE"),
        "put the collection": get("/v1/predictions", method="PUT"),
        "unknown route": get("/v1/admin"),
    }
    return corpus


def table_snapshot(database_url: str) -> list[tuple[object, ...]]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT id, request_id, predicted_digit, confidence, probabilities, true_digit,
                          feedback_at, md5(image_data), model_version, source
                   FROM predictions ORDER BY id"""
            )
            return cur.fetchall()
    finally:
        conn.close()


def test_hostile_requests_are_refused_and_change_nothing(
    reliability_api: ApiServer, database_url: str
) -> None:
    corpus = hostile_corpus()
    assert len(corpus) >= 50
    with reliability_api.client() as client:
        seeded = client.post("/v1/predictions", files={"image": ("d.png", PNG, "image/png")})
        assert seeded.status_code == 201
        prediction_id = seeded.json()["id"]
        corrected = client.post(f"/v1/predictions/{prediction_id}/feedback", json={"true_digit": 1})
        assert corrected.status_code == 200
        before = table_snapshot(database_url)

        failures = []
        for name, send in corpus.items():
            response = send(client, prediction_id)
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = None
            if not (400 <= response.status_code < 500 and detail):
                failures.append(f"{name}: {response.status_code} {response.text[:200]}")
        assert failures == [], "\n".join(failures)

        assert table_snapshot(database_url) == before
        assert client.get("/healthz").status_code == 200
        assert client.get("/readyz").status_code == 200
        again = client.post("/v1/predictions", files={"image": ("d.png", PNG, "image/png")})
        assert again.status_code == 201
    assert reliability_api.is_running()
    assert not [r for r in reliability_api.log_records() if r.get("status", 0) >= 500]
    print(f"\n{len(corpus)} hostile requests refused with a 4xx and a JSON detail")


def test_sql_in_a_valid_source_is_stored_as_plain_text(
    reliability_api: ApiServer, database_url: str
) -> None:
    with reliability_api.client() as client:
        response = upload(PNG, source=SQL[:64])(client, 0)
    assert response.status_code == 201
    rows = table_snapshot(database_url)
    assert [row[-1] for row in rows] == [SQL[:64]]
