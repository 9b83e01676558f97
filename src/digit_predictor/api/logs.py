"""Structured logs: JSON lines, and one line per request (id, route, status, latency)."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from digit_predictor.api.metrics import Metrics

log = logging.getLogger("digit_predictor.api.access")

# The current request's id; handlers and worker threads read it (contextvars follow the request
# into the thread pool). It is also the stored prediction's request_id.
request_id_var: ContextVar[uuid.UUID | None] = ContextVar("request_id", default=None)

REQUEST_ID_HEADER = "X-Request-ID"
UNMATCHED_ROUTE = "<unmatched>"  # any path no route matched: one label, not one per path

# Attributes every LogRecord has; anything else was passed through `extra=` and is logged.
_STANDARD_ATTRS = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys()
    | {"message", "asctime", "color_message"}
)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,  # which worker process (python -m digit_predictor.api)
        }
        request_id = request_id_var.get()
        if request_id is not None:
            entry["request_id"] = str(request_id)
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(*, debug: bool = False) -> None:
    """Send every log record, uvicorn's included, to stdout as JSON lines."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    # Our request line replaces uvicorn's access log (which has no id or latency).
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = []
    access.propagate = False
    access.disabled = True


def route_label(scope: Scope) -> str:
    route = scope.get("route")
    if isinstance(route, BaseRoute):
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
    return UNMATCHED_ROUTE


class RequestLogMiddleware:
    """Give each request an id, log one line when it ends, and count it in the metrics."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = uuid.uuid4()
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # unless a response starts: an exception escaped every handler
        status_started = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, status_started
            if message["type"] == "http.response.start":
                status = int(message["status"])
                status_started = True
                message.setdefault("headers", [])
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = str(request_id)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            # The last-resort handler: log the traceback with the request id and answer JSON.
            log.exception("unhandled error")
            if status_started:
                raise
            await _send_internal_error(send_with_id, request_id)
        finally:
            elapsed = time.perf_counter() - started
            route = route_label(scope)
            method = str(scope["method"])
            self.metrics.requests.labels(route=route, method=method, status=str(status)).inc()
            self.metrics.request_latency.labels(
                route=route, method=method, status=str(status)
            ).observe(elapsed)
            client = scope.get("client")
            state = scope.get("state")
            error = state.get("error") if isinstance(state, dict) else None
            log.log(
                logging.ERROR if status >= 500 else logging.INFO,
                "request",
                extra={
                    "method": method,
                    "path": str(scope["path"]),
                    "route": route,
                    "status": status,
                    "latency_ms": round(elapsed * 1000.0, 2),
                    "client": f"{client[0]}:{client[1]}" if client else None,
                    **({"error": error} if error else {}),
                },
            )
            request_id_var.reset(token)


async def _send_internal_error(send: Send, request_id: uuid.UUID) -> None:
    body = json.dumps(
        {
            "detail": "internal error; quote the request_id when reporting it",
            "request_id": str(request_id),
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
