"""The Draw page's decisions as plain functions: what to send, what to say, when to refresh."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from digit_predictor.web.api_client import ApiClient, ApiProblem, PredictionResult
from digit_predictor.web.canvas import Drawing
from digit_predictor.web.data import DatabaseUnavailable, HighScore
from digit_predictor.web.images import NotAnImage, flatten_drawing, is_blank

log = logging.getLogger(__name__)

EMPTY_DRAWING = "Draw a digit first: the canvas is empty."
QUEUED = "The prediction will be saved once the database is back; feedback is unavailable for now."


@dataclass(frozen=True)
class Outcome:
    result: PredictionResult | None = None
    kind: Literal["warning", "error"] | None = None
    message: str | None = None


def predict_drawing(client: ApiClient, drawing: Drawing) -> Outcome:
    """Send the drawing to the api unless it is empty; every failure becomes a message."""
    return _ask(drawing, lambda png: client.predict(png, source="web"))


def preview_drawing(client: ApiClient, drawing: Drawing) -> Outcome:
    """The live answer for the drawing, which the api does not store (predict as you draw).

    The same bytes as `predict_drawing` sends, so Predict then stores the answer shown.
    """
    return _ask(drawing, client.preview)


def drawing_key(drawing: Drawing) -> str | None:
    """Identifies what is on the canvas, to send each drawing for a live answer only once."""
    return hashlib.sha256(drawing.png).hexdigest() if drawing.png and drawing.strokes else None


def _ask(drawing: Drawing, send: Callable[[bytes], PredictionResult]) -> Outcome:
    if drawing.strokes == 0 or is_blank(drawing.png):
        return Outcome(kind="warning", message=EMPTY_DRAWING)
    assert drawing.png is not None
    try:
        png = flatten_drawing(drawing.png)
    except NotAnImage:
        return Outcome(kind="warning", message=EMPTY_DRAWING)
    try:
        return Outcome(result=send(png))
    except ApiProblem as exc:
        log.warning("prediction failed: %s", exc.message)
        kind: Literal["warning", "error"] = "warning" if _is_input_problem(exc) else "error"
        return Outcome(kind=kind, message=exc.message)


def _is_input_problem(exc: ApiProblem) -> bool:
    return getattr(exc, "status", None) == 422


@dataclass
class HighScoreState:
    """Today's high score as last read, and when to read it again.

    Read on the first visit, after every prediction, and at most every `ttl_s` otherwise, so
    that the reruns Streamlit makes for each stroke on the canvas do not query PostgreSQL (and
    do not wait for it when it is down).
    """

    ttl_s: float = 30.0
    retry_s: float = 10.0
    value: HighScore | None = None
    available: bool = False
    fetched_at: float | None = None
    clock: Callable[[], float] = field(default=time.monotonic, repr=False)

    def due(self) -> bool:
        if self.fetched_at is None:
            return True
        wait = self.ttl_s if self.available else self.retry_s
        return self.clock() - self.fetched_at >= wait

    def invalidate(self) -> None:
        self.fetched_at = None

    def refresh(self, fetch: Callable[[], HighScore | None]) -> None:
        try:
            self.value = fetch()
            self.available = True
        except DatabaseUnavailable as exc:
            log.warning("high score unavailable: %s", exc)
            self.available = False
        self.fetched_at = self.clock()

    def refresh_if_due(self, fetch: Callable[[], HighScore | None]) -> None:
        if self.due():
            self.refresh(fetch)
