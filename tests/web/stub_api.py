"""A tiny HTTP server that plays the inference api, for the web app's unit and AppTest tests.

It answers POST /v1/predictions with whatever the test queued (status, JSON body, delay) and
records every request, parsed, so a test can check what the web app actually sent.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from PIL import Image


@dataclass
class Reply:
    status: int = 201
    body: Any = None  # JSON-serialisable, or bytes sent as is
    delay_s: float = 0.0
    content_type: str = "application/json"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    fields: dict[str, bytes]


def prediction_body(
    digit: int = 7, confidence: float = 0.93, *, id: int | None = 1, with_input: bool = True
) -> dict[str, Any]:
    rest = (1.0 - confidence) / 9
    body: dict[str, Any] = {
        "id": id,
        "request_id": "5b1d9c1e-8f3a-4c0b-9a57-3d6f0e2b4a11",
        "digit": digit,
        "confidence": confidence,
        "probabilities": [confidence if d == digit else rest for d in range(10)],
        "model_version": "cnn-test",
        "created_at": "2026-11-21T12:00:00+00:00",
        "latency_ms": 4.2,
    }
    if with_input:
        img = Image.new("L", (28, 28), 0)
        img.paste(255, (12, 4, 16, 24))
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        body["model_input_png"] = base64.b64encode(buf.getvalue()).decode("ascii")
    return body


def parse_multipart(content_type: str, body: bytes) -> dict[str, bytes]:
    message = BytesParser(policy=HTTP).parsebytes(
        f"Content-Type: {content_type}\r\n\r\n".encode() + body
    )
    fields: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True)
        if isinstance(name, str) and isinstance(payload, bytes):
            fields[name] = payload
    return fields


@dataclass
class StubApi:
    replies: deque[Reply] = field(default_factory=deque)
    default: Reply = field(default_factory=lambda: Reply(201, prediction_body()))
    received: list[Received] = field(default_factory=list)
    url: str = ""

    def queue(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def next_reply(self) -> Reply:
        return self.replies.popleft() if self.replies else self.default


def _handler(stub: StubApi) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            fields = parse_multipart(self.headers.get("Content-Type", ""), raw)
            stub.received.append(Received(self.path, dict(self.headers.items()), fields))
            self._reply()

        def do_GET(self) -> None:
            stub.received.append(Received(self.path, dict(self.headers.items()), {}))
            self._reply()

        def _reply(self) -> None:
            reply = stub.next_reply()
            if reply.delay_s:
                time.sleep(reply.delay_s)
            payload = (
                reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            )
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (a timeout test)

    return Handler


class _Server(ThreadingHTTPServer):
    """Closes its keep-alive connections on shutdown, as a stopped process would."""

    daemon_threads = True

    def __init__(self, handler: type[BaseHTTPRequestHandler], port: int) -> None:
        super().__init__(("127.0.0.1", port), handler)
        self.open_sockets: list[socket.socket] = []

    def process_request(self, request: Any, client_address: Any) -> None:
        self.open_sockets.append(request)
        super().process_request(request, client_address)

    def server_close(self) -> None:
        super().server_close()
        for sock in self.open_sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@contextmanager
def running_stub(port: int = 0) -> Iterator[StubApi]:
    """A stub on `port` (0: any free one); the same port again plays a restarted api."""
    stub = StubApi()
    server = _Server(_handler(stub), port)
    stub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
