"""Every error answers JSON `{"detail": "...", "request_id": "..."}` saying what to fix."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from digit_predictor.api.logs import request_id_var
from digit_predictor.api.schemas import ErrorResponse
from digit_predictor.db import DatabaseUnavailable
from digit_predictor.db.queries import PredictionNotFound

log = logging.getLogger(__name__)

RETRY_AFTER_S = "5"

# Hints for fields whose bare validation message would not say what to do.
FIELD_HINTS = {
    "image": "send the drawing as a PNG or JPEG file in the multipart/form-data field 'image'",
    "true_digit": 'send JSON {"true_digit": N} with N an integer from 0 to 9',
    "source": "send at most 64 printable characters, e.g. 'web'",
}


class InvalidBody(RequestValidationError):
    """A route's own 422: the validation errors plus what the route's body should be."""

    def __init__(self, errors: Sequence[Any], body_hint: str) -> None:
        super().__init__(errors)
        self.body_hint = body_hint


DESCRIPTIONS = {
    400: "Malformed request (e.g. a broken multipart body)",
    401: "Missing or wrong X-API-Key (only when the api runs with API_KEY set)",
    404: "No prediction with this id",
    408: "The request body did not arrive in time",
    410: "The drawing was removed by the retention policy; the prediction is kept",
    413: "Too many bytes",
    415: "Wrong content type",
    422: "Invalid input; `detail` says which field and why",
    503: "Database unavailable (or, for a new prediction, the write queue is full); retry later",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the given error statuses."""
    return {code: {"model": ErrorResponse, "description": DESCRIPTIONS[code]} for code in codes}


def error_body(detail: str, errors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    request_id = request_id_var.get()
    body = ErrorResponse(
        detail=detail, errors=errors, request_id=str(request_id) if request_id else None
    )
    return body.model_dump(exclude_none=True)


def _field(loc: Sequence[Any]) -> str:
    # ("body", "image") -> "image"; ("query", "limit") -> "limit"; ("body",) -> "body"
    parts = [str(p) for p in loc[1:]] or [str(p) for p in loc]
    return ".".join(parts)


def summarise(
    errors: Sequence[Any], body_hint: str | None = None
) -> tuple[str, list[dict[str, Any]]]:
    """One readable line (field: problem (what to send)) and the errors without their inputs."""
    clean: list[dict[str, Any]] = []
    messages: list[str] = []
    for err in errors:
        loc = list(err.get("loc", ()))
        field = _field(loc)
        msg = str(err.get("msg", "invalid"))
        clean.append({"loc": loc, "msg": msg, "type": str(err.get("type", ""))})
        root = str(loc[1]) if len(loc) > 1 else field
        if err.get("type") == "json_invalid":
            field, msg = "body", "not valid JSON"
        hint = FIELD_HINTS.get(root)
        if loc and loc[0] == "body" and body_hint and root not in FIELD_HINTS:
            hint = body_hint
        line = f"{field}: {msg}" + (f" ({hint})" if hint else "")
        if line not in messages:
            messages.append(line)
    return "; ".join(messages[:5]) or "invalid request", clean


def respond(
    request: Request,
    detail: str,
    status: int,
    *,
    errors: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    # The request log line shows why a request was refused (see logs.RequestLogMiddleware).
    request.state.error = detail
    return JSONResponse(error_body(detail, errors), status_code=status, headers=headers)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    body_hint = exc.body_hint if isinstance(exc, InvalidBody) else None
    detail, errors = summarise(exc.errors(), body_hint)
    return respond(request, detail, 422, errors=errors)


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    headers = dict(exc.headers or {})
    detail = str(exc.detail)
    status = exc.status_code
    if status == 405:
        # Starlette's Allow lists only the first route that matched the path; list them all.
        allowed = allowed_methods(request)
        headers["Allow"] = ", ".join(allowed)
        detail = f"method {request.method} not allowed here; use {' or '.join(allowed)}"
    elif status == 400 and detail == "There was an error parsing the body":
        detail = "the request body could not be parsed; send a well-formed request"
    return respond(request, detail, status, headers=headers)


def allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.router.routes:
        regex = getattr(route, "path_regex", None)
        if regex is not None and regex.match(request.url.path) and getattr(route, "methods", None):
            methods.update(route.methods)
    return sorted(methods)


async def not_found(request: Request, exc: Exception) -> JSONResponse:
    return respond(request, f"{exc}; check the id", 404)


async def database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable", extra={"error": str(exc)})
    return respond(
        request,
        "the database is unavailable; try again in a few seconds",
        503,
        headers={"Retry-After": RETRY_AFTER_S},
    )


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(PredictionNotFound, not_found)
    # Unreachable, lost mid-way or timed out: the data layer says DatabaseUnavailable for all.
    app.add_exception_handler(DatabaseUnavailable, database_unavailable)
    # Anything else that escapes is answered (500, JSON, request id) by RequestLogMiddleware.
