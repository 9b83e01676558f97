from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from PIL import Image

from digit_predictor.web import actions
from digit_predictor.web.api_client import ApiClient
from digit_predictor.web.canvas import Drawing
from digit_predictor.web.data import DatabaseUnavailable, HighScore
from tests.web.drawings import BLANK, SEVEN, canvas_png
from tests.web.stub_api import Reply, StubApi, prediction_body, running_stub


@pytest.fixture
def stub() -> Iterator[StubApi]:
    with running_stub() as s:
        yield s


def _client(stub: StubApi) -> ApiClient:
    return ApiClient(stub.url, backoff_s=0.01)


def test_an_empty_canvas_sends_nothing(stub: StubApi) -> None:
    for drawing in (
        Drawing(png=None, strokes=0),
        Drawing(png=canvas_png(BLANK), strokes=0),
        Drawing(png=canvas_png(BLANK), strokes=2),  # strokes drawn off-canvas, no ink
    ):
        outcome = actions.predict_drawing(_client(stub), drawing)
        assert outcome.result is None
        assert outcome.kind == "warning" and outcome.message == actions.EMPTY_DRAWING
    assert stub.received == []


def test_a_drawing_is_sent_flattened_and_the_result_returned(stub: StubApi) -> None:
    stub.queue(Reply(201, prediction_body(digit=7, confidence=0.99, id=5)))
    outcome = actions.predict_drawing(
        _client(stub), Drawing(png=canvas_png(SEVEN, transparent=True), strokes=3)
    )
    assert outcome.result is not None and outcome.result.digit == 7 and outcome.message is None
    sent = Image.open(io.BytesIO(stub.received[0].fields["image"]))
    assert sent.format == "PNG" and sent.mode == "L" and sent.size == (280, 280)
    assert stub.received[0].fields["source"] == b"web"


def test_an_api_refusal_is_a_warning_with_its_words(stub: StubApi) -> None:
    stub.queue(Reply(422, {"detail": "only a dot was drawn: draw a digit first"}))
    outcome = actions.predict_drawing(_client(stub), Drawing(canvas_png(SEVEN), 3))
    assert outcome.result is None
    assert outcome.kind == "warning"
    assert outcome.message == "only a dot was drawn: draw a digit first"


def test_an_api_that_is_down_is_an_error_message() -> None:
    with running_stub() as gone:
        url = gone.url
    outcome = actions.predict_drawing(ApiClient(url, backoff_s=0.01), Drawing(canvas_png(SEVEN), 3))
    assert outcome.result is None and outcome.kind == "error"
    assert outcome.message is not None and "not reachable" in outcome.message


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_high_score_is_read_once_then_after_the_ttl() -> None:
    clock = FakeClock()
    calls: list[int] = []
    best = HighScore(digit=3, confidence=0.9, created_at=datetime.now(UTC))

    def fetch() -> HighScore | None:
        calls.append(1)
        return best

    state = actions.HighScoreState(ttl_s=30, retry_s=10, clock=clock)
    state.refresh_if_due(fetch)
    state.refresh_if_due(fetch)  # a rerun for a stroke: no query
    assert len(calls) == 1 and state.available and state.value == best
    clock.now += 29
    state.refresh_if_due(fetch)
    assert len(calls) == 1
    clock.now += 1
    state.refresh_if_due(fetch)
    assert len(calls) == 2
    state.invalidate()  # after a prediction
    state.refresh_if_due(fetch)
    assert len(calls) == 3


def test_high_score_unavailable_is_retried_sooner() -> None:
    clock = FakeClock()
    outcomes: list[object] = [DatabaseUnavailable("down"), None]

    def fetch() -> HighScore | None:
        result = outcomes.pop(0)
        if isinstance(result, Exception):
            raise result
        return None

    state = actions.HighScoreState(ttl_s=30, retry_s=10, clock=clock)
    state.refresh_if_due(fetch)
    assert not state.available
    clock.now += 9
    assert not state.due()
    clock.now += 1
    state.refresh_if_due(fetch)
    assert state.available and state.value is None and outcomes == []
