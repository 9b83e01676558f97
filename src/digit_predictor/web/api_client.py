"""HTTP client for the inference api: one reused session, timeouts, a bounded retry.

Every failure a person can meet comes out as an `ApiProblem` whose `message` can be shown as is.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import requests
from PIL import Image
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

PREDICTIONS_PATH = "/v1/predictions"
PREVIEWS_PATH = "/v1/previews"
CONNECT_TIMEOUT_S = 2.0
# Retried only where the api cannot have stored anything: refused or failed connections, and
# 502/503 (a proxy with no api behind it, or an api that is not ready). Never a read timeout.
RETRY_STATUSES = (502, 503)


class ApiProblem(Exception):
    """The api could not give a prediction; `message` is meant for the person at the page."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ApiUnavailable(ApiProblem):
    """Nothing answered at API_URL."""


class ApiTimeout(ApiProblem):
    """The api took longer than the timeout."""


class ApiError(ApiProblem):
    """The api answered with an error status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class ApiBadResponse(ApiProblem):
    """The api answered 2xx with something that is not a prediction."""


@dataclass(frozen=True)
class PredictionResult:
    id: int | None  # None when the api queued the row because the database was down
    request_id: str | None
    digit: int
    confidence: float
    probabilities: list[float]
    model_version: str
    created_at: datetime | None
    latency_ms: float | None
    model_input_png: bytes | None  # the 28x28 image the model saw, when the api sends it
    # False: the drawing does not look like a digit; an api without the detector says nothing.
    is_digit: bool = True
    ood_score: float | None = None
    preview: bool = False  # a live answer (POST /v1/previews): never stored, no id

    @property
    def queued(self) -> bool:
        return self.id is None


def parse_prediction(body: Any) -> PredictionResult:
    """Validate a prediction body from the api; raise ApiBadResponse when it is not one."""
    if not isinstance(body, dict):
        raise ApiBadResponse("The prediction service sent an unexpected answer.")
    try:
        digit = body["digit"]
        confidence = float(body["confidence"])
        probabilities = [float(p) for p in body["probabilities"]]
        raw_id = body.get("id")
        if not isinstance(digit, int) or isinstance(digit, bool) or not 0 <= digit <= 9:
            raise ValueError(f"digit {digit!r}")
        if raw_id is not None and (not isinstance(raw_id, int) or isinstance(raw_id, bool)):
            raise ValueError(f"id {raw_id!r}")
        if len(probabilities) != 10 or not all(
            math.isfinite(p) and 0.0 <= p <= 1.0 for p in [*probabilities, confidence]
        ):
            raise ValueError("probabilities")
        created_at = body.get("created_at")
        latency = body.get("latency_ms")
        is_digit = body.get("is_digit", True)
        if not isinstance(is_digit, bool):
            raise ValueError(f"is_digit {is_digit!r}")
        ood_score = body.get("ood_score")
        return PredictionResult(
            id=raw_id,
            request_id=str(body["request_id"]) if body.get("request_id") else None,
            digit=digit,
            confidence=confidence,
            probabilities=probabilities,
            model_version=str(body.get("model_version") or "unknown"),
            created_at=datetime.fromisoformat(created_at) if created_at else None,
            latency_ms=float(latency) if latency is not None else None,
            model_input_png=_decode_png(body.get("model_input_png")),
            is_digit=is_digit,
            ood_score=float(ood_score) if ood_score is not None else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ApiBadResponse(
            f"The prediction service sent an unexpected answer (bad field: {exc})."
        ) from exc


def _decode_png(value: Any) -> bytes | None:
    if not isinstance(value, str) or not value:
        return None
    if value.startswith("data:"):
        value = value.partition(",")[2]
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(b"\x89PNG\r\n\x1a\n") else None


def error_detail(response: requests.Response) -> str:
    """The api's `detail` as one readable line (FastAPI sends a string or a list of errors)."""
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    if isinstance(detail, str) and detail.strip():
        return detail.strip()
    if isinstance(detail, list) and detail:
        parts = [str(d.get("msg", d)) if isinstance(d, dict) else str(d) for d in detail]
        return "; ".join(parts)
    return response.reason or f"HTTP {response.status_code}"


def _message_for(status: int, detail: str) -> str:
    if status == 422:
        return detail  # the api words these for people: "draw a digit first", ...
    if status in (401, 403):
        return "The web app is not allowed to use the prediction service (check API_KEY)."
    if status == 413:
        return "The drawing is too large for the prediction service."
    if 400 <= status < 500:
        return f"The prediction service refused the drawing: {detail}"
    return f"The prediction service had a problem (HTTP {status}). Please try again in a moment."


class ApiClient:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
        retries: int = 2,
        backoff_s: float = 0.2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (min(connect_timeout_s, timeout_s), timeout_s)
        self.session = requests.Session()
        retry = Retry(
            total=retries,
            connect=retries,
            read=False,  # a read timeout is raised as such: the api may be working on it
            status=retries,
            other=0,
            status_forcelist=RETRY_STATUSES,
            allowed_methods=frozenset({"GET", "POST"}),
            backoff_factor=backoff_s,
            respect_retry_after_header=False,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_connections=4, pool_maxsize=16)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["Accept"] = "application/json"
        if api_key:
            self.session.headers["X-API-Key"] = api_key

    def predict(self, png: bytes, *, source: str = "web") -> PredictionResult:
        """Send a drawing to be predicted and stored; raise an ApiProblem subclass on failure."""
        response = self._send(
            "POST",
            PREDICTIONS_PATH,
            files={"image": ("drawing.png", png, "image/png")},
            data={"source": source},
        )
        return parse_prediction(self._json(response))

    def preview(self, png: bytes) -> PredictionResult:
        """The answer for a drawing that is not stored (predict as you draw); `id` is None."""
        response = self._send(
            "POST", PREVIEWS_PATH, files={"image": ("drawing.png", png, "image/png")}
        )
        return dataclasses.replace(parse_prediction(self._json(response)), preview=True)

    def explanation_overlay(self, prediction_id: int, digit: int, *, scale: int = 8) -> bytes:
        """The PNG of why the model's answer for this stored prediction was (or was not) `digit`."""
        response = self._send(
            "GET",
            f"{PREDICTIONS_PATH}/{int(prediction_id)}/explanation/overlay",
            params={"digit": int(digit), "scale": int(scale)},
            headers={"Accept": "image/png"},
        )
        try:
            with Image.open(io.BytesIO(response.content)) as picture:
                if picture.format != "PNG":
                    raise ValueError(picture.format)
                picture.verify()
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's ways of saying "not a PNG"
            raise ApiBadResponse("The prediction service sent an unreadable picture.") from exc
        return response.content

    def _send(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        """One request; every failure (no answer, timeout, error status) as an ApiProblem."""
        try:
            response = self.session.request(
                method, self.base_url + path, timeout=self.timeout, **kwargs
            )
        except requests.Timeout as exc:
            if isinstance(exc, requests.ConnectTimeout):
                raise ApiUnavailable(
                    "The prediction service is not reachable right now. "
                    "Please try again in a moment."
                ) from exc
            raise ApiTimeout(
                f"The prediction service did not answer within {self.timeout[1]:g} s. "
                "Please try again."
            ) from exc
        except requests.RequestException as exc:
            raise ApiUnavailable(
                "The prediction service is not reachable right now. Please try again in a moment."
            ) from exc
        if response.status_code >= 400:
            raise ApiError(
                _message_for(response.status_code, error_detail(response)), response.status_code
            )
        return response

    @staticmethod
    def _json(response: requests.Response) -> Any:
        try:
            return response.json()
        except ValueError as exc:
            raise ApiBadResponse("The prediction service sent an unreadable answer.") from exc

    def close(self) -> None:
        self.session.close()
