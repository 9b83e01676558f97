"""Predict as you draw and "Why?" on the Draw page, through streamlit.testing.v1.AppTest.

As in test_app.py: the api is the stub HTTP server, the canvas returns the PNG a test chooses,
feedback goes to the real PostgreSQL. The browser test (test_browser_live.py) covers the real
canvas, the fragment reruns and the timing.
"""

from __future__ import annotations

from typing import Any

from PIL import Image
from streamlit.testing.v1 import AppTest

from digit_predictor.db import Database
from digit_predictor.db.queries import get_prediction
from digit_predictor.web.canvas import Drawing
from digit_predictor.web.images import to_png
from tests.web import test_app
from tests.web.drawings import ONE, SEVEN, canvas_png
from tests.web.stub_api import Reply, StubApi, prediction_body
from tests.web.test_app import Page, _app, _no_failure, _stored, _texts

# The same fixtures as test_app.py: the replaced canvas, the stub api, fresh caches.
page = test_app.page
stub = test_app.stub
_fresh_caches = test_app._fresh_caches

OVERLAY = to_png(Image.new("RGB", (196, 196), (200, 40, 20)))


def preview_body(digit: int, confidence: float) -> dict[str, Any]:
    body = prediction_body(digit=digit, confidence=confidence)
    for stored_only in ("id", "request_id", "created_at"):
        del body[stored_only]
    body["stored"] = False
    return body


def _paths(stub: StubApi) -> list[str]:
    return [r.path for r in stub.received]


def _live_on(at: AppTest) -> AppTest:
    return at.toggle(key="live").set_value(True).run()


def test_live_is_off_by_default_and_strokes_send_nothing(page: Page, stub: StubApi) -> None:
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.run()
    assert at.toggle(key="live").value is False
    assert stub.received == []
    assert "Your prediction appears here." in [i.value for i in at.info]


def test_live_answers_each_new_drawing_once_without_storing(page: Page, stub: StubApi) -> None:
    stub.queue(Reply(200, preview_body(1, 0.81)), Reply(200, preview_body(7, 0.9)))
    page.drawing = Drawing(canvas_png(ONE), strokes=1)
    at = _live_on(_app().run())
    _no_failure(at)
    assert _paths(stub) == ["/v1/previews"]
    assert stub.received[0].fields.keys() == {"image"}  # no source: nothing is stored
    assert any(">1</div>" in m.value for m in at.markdown)
    assert "Live answer for 1 stroke: not saved." in _texts(at)
    assert not any(b.key and b.key.startswith("right-") for b in at.button)  # no feedback
    assert not [t for t in at.toggle if t.key and t.key.startswith("why-")]

    at.run()  # a rerun with the same drawing (e.g. another widget): not sent again
    assert _paths(stub) == ["/v1/previews"]

    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at.run()
    assert _paths(stub) == ["/v1/previews", "/v1/previews"]
    assert any(">7</div>" in m.value for m in at.markdown)
    assert "Live answer for 3 strokes: not saved." in _texts(at)
    _no_failure(at)


def test_predict_stores_the_live_drawing_and_the_note_goes(
    page: Page, stub: StubApi, db: Database
) -> None:
    pid = _stored(db, 7, 0.9)
    stub.queue(Reply(200, preview_body(7, 0.9)), Reply(201, prediction_body(7, 0.9, id=pid)))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _live_on(_app().run())
    at.button(key="predict").click().run()
    _no_failure(at)
    assert _paths(stub) == ["/v1/previews", "/v1/predictions"]
    # The same bytes: what was answered live is what is stored.
    assert stub.received[0].fields["image"] == stub.received[1].fields["image"]
    assert "Live answer" not in _texts(at)
    assert at.button(key=f"right-{pid}").label == "Yes, it was a 7"
    at.run()  # the stored answer's drawing is not previewed again
    assert _paths(stub) == ["/v1/previews", "/v1/predictions"]


def test_live_refusal_and_outage_are_messages(page: Page, stub: StubApi) -> None:
    stub.queue(Reply(422, {"detail": "only a dot was drawn: draw a digit first"}))
    page.drawing = Drawing(canvas_png(ONE), strokes=1)
    at = _live_on(_app().run())
    assert [w.value for w in at.warning] == ["only a dot was drawn: draw a digit first"]
    _no_failure(at)


def test_why_shows_the_answer_then_the_correction(page: Page, stub: StubApi, db: Database) -> None:
    pid = _stored(db, 7, 0.9)
    stub.queue(
        Reply(201, prediction_body(7, 0.9, id=pid)),
        Reply(200, OVERLAY, content_type="image/png"),
        Reply(200, OVERLAY, content_type="image/png"),
    )
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    images_before = len(at.get("image"))
    assert at.toggle(key=f"why-{pid}").value is False
    assert _paths(stub) == ["/v1/predictions"]  # nothing explained until asked

    at.toggle(key=f"why-{pid}").set_value(True).run()
    _no_failure(at)
    overlay = f"/v1/predictions/{pid}/explanation/overlay"
    assert _paths(stub)[1:] == [f"{overlay}?digit=7&scale=7"]
    assert len(at.get("image")) == images_before + 1
    assert "Red: ink that made the model think of this digit" in _texts(at)

    at.button_group(key=f"truth-{pid}").set_value(1).run()
    at.button(key=f"save-{pid}").click().run()
    assert get_prediction(db, pid).true_digit == 1
    assert _paths(stub)[1:] == [f"{overlay}?digit=7&scale=7", f"{overlay}?digit=1&scale=7"]
    assert len(at.get("image")) == images_before + 2
    at.run()  # fetched once per page session
    assert len(stub.received) == 3
    _no_failure(at)


def test_why_when_the_explanation_fails_says_so(page: Page, stub: StubApi, db: Database) -> None:
    pid = _stored(db, 4, 0.6)
    stub.queue(
        Reply(201, prediction_body(4, 0.6, id=pid)),
        # 503 is retried twice (the api may be restarting): unavailable all three times.
        *[Reply(503, {"detail": "the database is unavailable; try again"})] * 3,
    )
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    at.toggle(key=f"why-{pid}").set_value(True).run()
    assert any("Why a 4" in w.value and "try again" in w.value for w in at.warning)
    _no_failure(at)


def test_a_queued_prediction_has_no_why(page: Page, stub: StubApi) -> None:
    stub.queue(Reply(202, prediction_body(4, 0.8, id=None)))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    assert not [t for t in at.toggle if t.key and t.key.startswith("why-")]
    _no_failure(at)
