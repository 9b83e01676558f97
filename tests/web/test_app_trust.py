"""The Draw page when the api says a drawing is not a digit (issue 12), through AppTest."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from digit_predictor.db import Database
from digit_predictor.db.queries import get_prediction
from digit_predictor.web.canvas import Drawing
from digit_predictor.web.views import draw
from tests.web.drawings import SEVEN, canvas_png
from tests.web.stub_api import Reply, StubApi, prediction_body
from tests.web.test_app import Page, _app, _no_failure, _stored
from tests.web.test_app import _fresh_caches as _fresh_caches  # autouse fixture
from tests.web.test_app import page as page  # fixture
from tests.web.test_app import stub as stub  # fixture


def _markdown(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown)


def test_a_non_digit_is_said_plainly_with_the_guess_only_secondary(
    page: Page, stub: StubApi, db: Database
) -> None:
    pid = _stored(db, 4, 0.62)
    body = prediction_body(digit=4, confidence=0.62, id=pid)
    body.update(is_digit=False, ood_score=0.998)
    stub.queue(Reply(201, body))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)

    at = _app().run()
    at.button(key="predict").click().run()
    _no_failure(at)
    warnings = [w.value for w in at.warning]
    assert any(draw.NOT_A_DIGIT in w and "0-9" in w for w in warnings), warnings
    markdown = _markdown(at)
    assert 'class="predicted-digit"' not in markdown  # no big digit
    assert 'class="best-guess"' in markdown and "<b>4</b> (62.0%)" in markdown
    # Feedback is still allowed: the person may insist it is a digit.
    at.button_group(key=f"truth-{pid}").set_value(1).run()
    at.button(key=f"save-{pid}").click().run()
    assert get_prediction(db, pid).true_digit == 1
    _no_failure(at)


def test_a_digit_shows_no_such_message(page: Page, stub: StubApi, db: Database) -> None:
    pid = _stored(db, 7, 0.97)
    body = prediction_body(digit=7, confidence=0.97, id=pid)
    body.update(is_digit=True, ood_score=0.01)
    stub.queue(Reply(201, body))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)

    at = _app().run()
    at.button(key="predict").click().run()
    _no_failure(at)
    assert not any(draw.NOT_A_DIGIT in w.value for w in at.warning)
    markdown = _markdown(at)
    assert 'class="predicted-digit"' in markdown and ">7</div>" in markdown
    assert 'class="best-guess"' not in markdown


def test_the_client_reads_the_verdict_and_refuses_a_malformed_one() -> None:
    import pytest

    from digit_predictor.web.api_client import ApiBadResponse, parse_prediction

    body = prediction_body()
    assert parse_prediction(body).is_digit is True  # an api without the detector
    body.update(is_digit=False, ood_score=0.93)
    result = parse_prediction(body)
    assert result.is_digit is False and result.ood_score == 0.93
    body["is_digit"] = "no"
    with pytest.raises(ApiBadResponse):
        parse_prediction(body)
