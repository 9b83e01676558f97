"""Upload limits before parsing: declared size, counted size, and a deadline for the body.

These talk raw HTTP over a socket: a well-behaved client library cannot lie about its body.
"""

from __future__ import annotations

import json
import socket
import time

import httpx

from digit_predictor.db import Database, queries
from tests.api.conftest import READ_TIMEOUT_S
from tests.servers import ApiServer

HEAD = (
    "POST /v1/predictions HTTP/1.1\r\nHost: test\r\n"
    "Content-Type: multipart/form-data; boundary=XyZ\r\n"
)
PART_START = (
    b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n\r\n'
    b"\x89PNG\r\n\x1a\n"
)


def connect(api: ApiServer) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response (status, lower-cased headers, body) until the server closes."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_declared_content_length_over_the_limit_is_refused_before_the_body(
    api: ApiServer, db: Database
) -> None:
    with connect(api) as sock:
        started = time.monotonic()
        sock.sendall(f"{HEAD}Content-Length: {50 * 1024 * 1024}\r\n\r\n".encode())
        status, headers, body = read_response(sock)  # no body byte was sent
        elapsed = time.monotonic() - started
    assert status == 413
    assert elapsed < 5
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    detail = json.loads(body)["detail"]
    assert "too many bytes" in detail and "52428800" in detail
    assert queries.count_predictions(db) == 0


def test_chunked_body_is_cut_off_at_the_limit(api: ApiServer, db: Database) -> None:
    chunk = b"\0" * 65536
    sent = 0
    with connect(api) as sock:
        sock.sendall(f"{HEAD}Transfer-Encoding: chunked\r\n\r\n".encode())
        sock.sendall(b"%x\r\n%s\r\n" % (len(PART_START), PART_START))
        try:
            for _ in range(64):  # up to 4 MiB, far past the 1 MiB limit
                sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server stopped reading: expected once the limit is passed
        status, headers, body = read_response(sock)
    assert status == 413, body
    assert "too many bytes" in json.loads(body)["detail"]
    assert headers["connection"] == "close"
    assert sent < 4 * 1024 * 1024 or status == 413
    assert queries.count_predictions(db) == 0


def test_a_body_that_trickles_in_gets_408_and_does_not_block_others(
    small_api: ApiServer, db: Database
) -> None:
    with connect(small_api) as sock:
        started = time.monotonic()
        sock.sendall(f"{HEAD}Content-Length: 5000\r\n\r\n".encode() + PART_START)
        # Meanwhile the api keeps serving everyone else.
        with small_api.client() as client:
            assert client.get("/healthz", timeout=2).status_code == 200
        sock.sendall(b"\0" * 10)  # a few bytes, then nothing more
        status, headers, body = read_response(sock)
        elapsed = time.monotonic() - started
    assert status == 408
    assert READ_TIMEOUT_S - 0.1 <= elapsed < READ_TIMEOUT_S + 5
    assert headers["connection"] == "close"
    assert "did not arrive" in json.loads(body)["detail"]
    assert queries.count_predictions(db) == 0


def test_a_client_that_never_sends_its_body_gets_408(small_api: ApiServer) -> None:
    with connect(small_api) as sock:
        sock.sendall(f"{HEAD}Content-Length: 100\r\n\r\n".encode())
        status, _, _ = read_response(sock)
    assert status == 408


def test_a_normal_upload_just_under_the_deadline_is_fine(small_api: ApiServer) -> None:
    from tests.api import drawings

    with small_api.client() as client:
        png = drawings.drawing_png(1)
        response = client.post("/v1/predictions", files={"image": ("d.png", png, "image/png")})
    assert response.status_code == 201, response.text


def test_keep_alive_connection_survives_a_refused_upload(api: ApiServer) -> None:
    # A 422 (body fully read) keeps the connection usable; httpx reuses it.
    with httpx.Client(base_url=api.url) as client:
        bad = client.post("/v1/predictions", files={"image": ("d.png", b"nope", "image/png")})
        assert bad.status_code == 422
        assert client.get("/healthz").status_code == 200
