"""Slow clients cannot hold the api hostage: slow bodies are cut off, others keep being served."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.api import drawings
from tests.servers import ApiServer, api_env, start_api

pytestmark = pytest.mark.reliability

READ_DEADLINE_S = 2.0
SLOW_BODIES = 40  # more than the worker thread pool would hold if reads blocked it
SLOW_HEADERS = 40

HEAD = (
    b"POST /v1/predictions HTTP/1.1\r\nHost: test\r\n"
    b"Content-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 200000\r\n\r\n"
    b'--XyZ\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n\r\n'
) + b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def deadline_api(migrated_database_url: str, reliability_model: Path) -> Iterator[ApiServer]:
    env = api_env(migrated_database_url, reliability_model, request_timeout_s=READ_DEADLINE_S)
    server = start_api(env)
    yield server
    server.cleanup()


def trickle_body(port: int, statuses: list[int | None], stop: threading.Event) -> None:
    """Announce 200 kB, then send a byte every 0.2 s: a slow-upload (slowloris) client."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(HEAD)
        reply = b""
        try:
            while not stop.is_set():
                sock.sendall(b"\0")
                sock.settimeout(0.2)
                try:
                    reply = sock.recv(4096)
                    break
                except TimeoutError:
                    continue
        except (BrokenPipeError, ConnectionResetError):
            pass
        status = int(reply.split(b" ")[1]) if reply.startswith(b"HTTP/1.1 ") else None
        statuses.append(status)


def test_slow_uploads_are_cut_off_while_others_are_served(
    deadline_api: ApiServer, database_url: str
) -> None:
    stop = threading.Event()
    statuses: list[int | None] = []
    slow = [
        threading.Thread(target=trickle_body, args=(deadline_api.port, statuses, stop))
        for _ in range(SLOW_BODIES)
    ]
    # Clients that open a connection and dribble their request line and headers.
    idle_sockets = []
    for _ in range(SLOW_HEADERS):
        sock = socket.create_connection(("127.0.0.1", deadline_api.port), timeout=10)
        sock.sendall(b"POST /v1/predictions HTTP/1.1\r\nHost: te")
        idle_sockets.append(sock)
    started = time.monotonic()
    for thread in slow:
        thread.start()

    try:
        # While all of them hang on, a normal client gets quick answers.
        png = drawings.drawing_png(7)
        latencies = []
        with deadline_api.client(timeout=10) as client:
            for _ in range(10):
                t0 = time.monotonic()
                response = client.post(
                    "/v1/predictions", files={"image": ("d.png", png, "image/png")}
                )
                latencies.append(time.monotonic() - t0)
                assert response.status_code == 201, response.text
        assert max(latencies) < 2.0, latencies

        for thread in slow:
            thread.join(timeout=READ_DEADLINE_S + 20)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        for sock in idle_sockets:
            sock.close()

    print(
        f"\n{SLOW_BODIES} slow uploads answered {sorted(set(statuses), key=str)} within "
        f"{elapsed:.1f} s; normal requests meanwhile: max {max(latencies) * 1000:.0f} ms"
    )
    assert statuses == [408] * SLOW_BODIES
    assert elapsed < READ_DEADLINE_S + 15
    assert deadline_api.is_running()
    with deadline_api.client() as client:
        assert client.get("/readyz").status_code == 200
