"""The pages' logic through streamlit.testing.v1.AppTest.

The api is a local stub HTTP server (tests/web/stub_api.py); feedback, history, the high score
and statistics use the real PostgreSQL from tests/conftest.py. The canvas is a browser component
that AppTest cannot draw on, so `canvas.draw_canvas` is replaced by a function that returns
the PNG a test chooses; the browser test covers the real canvas.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from digit_predictor.config import get_settings
from digit_predictor.db import Database, registry
from digit_predictor.db.queries import NewPrediction, get_prediction, insert_prediction
from digit_predictor.web import actions, canvas, data, ui
from digit_predictor.web.canvas import Drawing
from digit_predictor.web.views import draw
from tests.web.drawings import BLANK, SEVEN, canvas_png
from tests.web.stub_api import Reply, StubApi, prediction_body, running_stub

APP = Path(__file__).resolve().parents[2] / "src" / "digit_predictor" / "web" / "app.py"
TZ = "Europe/Berlin"


@dataclass
class Page:
    drawing: Drawing


@pytest.fixture
def page(monkeypatch: pytest.MonkeyPatch) -> Page:
    """What the (replaced) canvas returns; starts empty, as a fresh canvas does."""
    current = Page(Drawing(png=None, strokes=0))
    monkeypatch.setattr(canvas, "draw_canvas", lambda key: current.drawing)
    return current


def _configure(monkeypatch: pytest.MonkeyPatch, *, api_url: str, database_url: str) -> None:
    monkeypatch.setenv("API_URL", api_url)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("HIGH_SCORE_TZ", TZ)
    monkeypatch.setenv("DB_CONNECT_TIMEOUT_S", "1")
    monkeypatch.delenv("API_KEY", raising=False)
    get_settings.cache_clear()
    st.cache_resource.clear()


@pytest.fixture(autouse=True)
def _fresh_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)  # no developer `.env` (read from the working directory) leaks in
    yield
    get_settings.cache_clear()
    st.cache_resource.clear()


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch, database_url: str) -> Iterator[StubApi]:
    with running_stub() as s:
        _configure(monkeypatch, api_url=s.url, database_url=database_url)
        yield s


def _app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=30)


def _stored(db: Database, digit: int, confidence: float) -> int:
    """A row as the api would have written it; the stub then answers with its id."""
    rest = (1 - confidence) / 9
    return insert_prediction(
        db,
        NewPrediction(
            predicted_digit=digit,
            confidence=confidence,
            probabilities=[confidence if d == digit else rest for d in range(10)],
            image_data=canvas_png(SEVEN),
            model_version="cnn-test",
            source="web",
        ),
    ).id


def _texts(at: AppTest) -> str:
    parts = [m.value for m in at.markdown] + [c.value for c in at.caption]
    for kind in (at.error, at.warning, at.info, at.success):
        parts += [e.value for e in kind]
    return "\n".join(str(p) for p in parts)


def _no_failure(at: AppTest) -> None:
    assert not at.exception, at.exception
    assert ui.UNEXPECTED not in _texts(at)


def test_landing_page_invites_a_drawing(page: Page, stub: StubApi) -> None:
    at = _app().run()
    _no_failure(at)
    assert at.title[0].value == "Draw a digit"
    assert "Your prediction appears here." in [i.value for i in at.info]
    assert f"{draw.NO_DIGIT_YET} ({TZ})" in _texts(at)
    assert at.button(key="predict").label == "Predict"


def test_predicting_an_empty_canvas_sends_nothing(page: Page, stub: StubApi) -> None:
    at = _app().run()
    at.button(key="predict").click().run()
    assert [w.value for w in at.warning] == [actions.EMPTY_DRAWING]
    page.drawing = Drawing(canvas_png(BLANK), strokes=1)
    at.button(key="predict").click().run()
    assert [w.value for w in at.warning] == [actions.EMPTY_DRAWING]
    assert stub.received == []


def test_predict_shows_the_result_and_feedback_is_stored_and_changeable(
    page: Page, stub: StubApi, db: Database
) -> None:
    pid = _stored(db, 7, 0.93)
    stub.queue(Reply(201, prediction_body(digit=7, confidence=0.93, id=pid)))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)

    at = _app().run()
    at.button(key="predict").click().run()
    _no_failure(at)
    assert len(stub.received) == 1
    markdown = "\n".join(m.value for m in at.markdown)
    assert 'class="predicted-digit"' in markdown and ">7</div>" in markdown
    assert "Confidence **93.0%**" in markdown
    assert len(at.get("vega_lite_chart")) == 1  # the ten probabilities
    assert len(at.get("image")) == 1  # the 28x28 input the api sent back
    # The high score was read again after the prediction: this row is today's best.
    assert at.metric[0].label == "Today's high score" and at.metric[0].value == "93.0%"

    at.button(key=f"right-{pid}").click().run()
    assert get_prediction(db, pid).true_digit == 7
    assert "Thank you! Saved: it was a 7." in at.success[0].value

    at.button_group(key=f"truth-{pid}").set_value(1).run()
    at.button(key=f"save-{pid}").click().run()
    assert get_prediction(db, pid).true_digit == 1
    assert "Saved: it was a 1." in at.success[0].value
    _no_failure(at)


def test_correction_without_a_digit_asks_for_one(page: Page, stub: StubApi, db: Database) -> None:
    pid = _stored(db, 3, 0.6)
    stub.queue(Reply(201, prediction_body(digit=3, confidence=0.6, id=pid)))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    at.button(key=f"save-{pid}").click().run()
    assert [w.value for w in at.warning] == ["Pick the digit you drew first."]
    assert get_prediction(db, pid).true_digit is None


def test_clear_removes_the_result_and_gives_a_fresh_canvas(
    page: Page, stub: StubApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys: list[str] = []

    def fake_canvas(key: str) -> Drawing:
        keys.append(key)
        return page.drawing

    monkeypatch.setattr(canvas, "draw_canvas", fake_canvas)
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    assert any("predicted-digit" in m.value for m in at.markdown)
    at.button(key="clear").click().run()
    assert not any("predicted-digit" in m.value for m in at.markdown)
    assert "Your prediction appears here." in [i.value for i in at.info]
    assert keys[0] == "canvas-0" and keys[-1] == "canvas-1"


def test_an_api_refusal_shows_its_words(page: Page, stub: StubApi) -> None:
    stub.queue(Reply(422, {"detail": "only a dot was drawn: draw a digit first"}))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=1)
    at = _app().run()
    at.button(key="predict").click().run()
    assert [w.value for w in at.warning] == ["only a dot was drawn: draw a digit first"]
    _no_failure(at)


def test_a_queued_prediction_says_feedback_waits_for_the_database(
    page: Page, stub: StubApi
) -> None:
    stub.queue(Reply(202, prediction_body(digit=4, confidence=0.8, id=None)))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    assert actions.QUEUED in [i.value for i in at.info]
    assert any(">4</div>" in m.value for m in at.markdown)
    assert not [b for b in at.button if b.key and b.key.startswith(("right-", "save-"))]


def test_api_down_then_back_works_again_by_itself(
    page: Page, monkeypatch: pytest.MonkeyPatch, database_url: str
) -> None:
    with running_stub() as first:
        port = int(first.url.rsplit(":", 1)[1])
    _configure(monkeypatch, api_url=first.url, database_url=database_url)
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)

    at = _app().run()
    at.button(key="predict").click().run()
    assert len(at.error) == 1 and "not reachable" in at.error[0].value
    assert not any("predicted-digit" in m.value for m in at.markdown)
    _no_failure(at)

    with running_stub(port) as back:  # the api returns on the same address
        back.queue(Reply(201, prediction_body(digit=2, confidence=0.7, id=None)))
        at.button(key="predict").click().run()
        assert not at.error
        assert any(">2</div>" in m.value for m in at.markdown)


def test_a_slow_api_is_a_timeout_message(
    page: Page, stub: StubApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REQUEST_TIMEOUT_S", "0.3")
    get_settings.cache_clear()
    st.cache_resource.clear()
    stub.queue(Reply(201, prediction_body(), delay_s=1.0))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    assert len(at.error) == 1 and "did not answer within 0.3 s" in at.error[0].value


def test_database_down_keeps_drawing_and_predicting(
    page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_stub() as api:
        _configure(monkeypatch, api_url=api.url, database_url="postgresql://x@127.0.0.1:1/none")
        api.queue(Reply(202, prediction_body(digit=9, confidence=0.9, id=None)))
        page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
        at = _app().run()
        assert "Unavailable right now: the database cannot be reached." in _texts(at)
        at.button(key="predict").click().run()
        assert any(">9</div>" in m.value for m in at.markdown)
        assert actions.QUEUED in [i.value for i in at.info]
        _no_failure(at)

        for page_path, what in (
            ("views/history.py", "History"),
            ("views/statistics.py", "Statistics"),
        ):
            at.switch_page(page_path).run()
            assert [w.value for w in at.warning] == [ui.db_unavailable_message(what)]
            _no_failure(at)


def test_history_lists_predictions_newest_first_and_pages(stub: StubApi, db: Database) -> None:
    ids = [_stored(db, d % 10, 0.5) for d in range(23)]
    data.save_feedback(db, ids[-1], 2)  # the newest, a 2: right
    at = _app().run()
    at.switch_page("views/history.py").run()
    _no_failure(at)
    frame = at.dataframe[0].value
    assert len(frame) == 20
    assert frame["ID"].tolist()[:3] == [ids[-1], ids[-2], ids[-3]]
    assert frame.loc[0, "Result"] == "✓ right"
    assert "23 predictions, newest first · showing 1–20" in _texts(at)

    assert at.button(key="history-newer").disabled
    at.button(key="history-older").click().run()
    assert at.dataframe[0].value["ID"].tolist() == list(reversed(ids))[20:]
    assert "showing 21–23 · page 2 of 2" in _texts(at)
    assert at.button(key="history-older").disabled  # the oldest page
    at.button(key="history-newer").click().run()
    assert at.dataframe[0].value["ID"].tolist()[:3] == [ids[-1], ids[-2], ids[-3]]

    # Larger pages start again from the newest rows.
    at.button(key="history-older").click().run()
    at.selectbox(key="history_page_size").set_value(50).run()
    _no_failure(at)
    assert len(at.dataframe[0].value) == 23
    assert "showing 1–23" in _texts(at)
    assert at.button(key="history-older").disabled and at.button(key="history-newest").disabled


def test_history_starts_again_when_its_cursor_row_is_deleted(stub: StubApi, db: Database) -> None:
    ids = [_stored(db, d % 10, 0.5) for d in range(25)]
    at = _app().run()
    at.switch_page("views/history.py").run()
    at.button(key="history-older").click().run()
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM predictions WHERE id = %s", (ids[5],))  # the cursor's row
    at.run()
    _no_failure(at)
    assert at.dataframe[0].value["ID"].tolist()[0] == ids[-1]


def test_history_and_statistics_of_an_empty_database(stub: StubApi, db: Database) -> None:
    at = _app().run()
    at.switch_page("views/history.py").run()
    assert "No predictions yet" in at.info[0].value
    at.switch_page("views/statistics.py").run()
    assert [m.value for m in at.metric][:2] == ["0", "0"]
    _no_failure(at)


def test_statistics_show_totals_and_accuracy(stub: StubApi, db: Database) -> None:
    right, wrong, _ = _stored(db, 1, 0.9), _stored(db, 7, 0.7), _stored(db, 3, 0.5)
    data.save_feedback(db, right, 1)
    data.save_feedback(db, wrong, 1)
    at = _app().run()
    at.switch_page("views/statistics.py").run()
    _no_failure(at)
    metrics = {m.label: m.value for m in at.metric}
    assert metrics == {
        "Predictions": "3",
        "With feedback": "2",
        "Accuracy on feedback": "50.0%",
        "Mean confidence": "70.0%",
    }
    # Per digit, per day, confusion, accuracy per model version, reliability.
    assert len(at.get("vega_lite_chart")) == 5
    assert "Expected calibration error: 40.0%." in _texts(at)


def test_statistics_show_the_live_model_and_its_gate(stub: StubApi, db: Database) -> None:
    at = _app().run()
    at.switch_page("views/statistics.py").run()
    assert "No model is registered yet" in _texts(at)

    gate = {"passed": True, "rows": [{"benchmark": "MNIST test", "champion": 0.9959}]}
    for version, card in (("shipped-1", {}), ("retrained-2", {"gate": gate})):
        registry.register(
            db, version=version, parent_version=None, arch="a", weights=version.encode(), card=card
        )
    registry.promote(db, "shipped-1", reason="shipped")
    registry.promote(db, "retrained-2", reason="the gate passed")
    at.switch_page("views/statistics.py").run()
    _no_failure(at)
    assert "Live: **`retrained-2`**" in _texts(at)
    assert "the gate passed" in _texts(at)
    frames = [d.value for d in at.dataframe]
    assert frames[0]["benchmark"].tolist() == ["MNIST test"]
    assert frames[1].set_index("Version")["Status"].to_dict() == {
        "retrained-2": "champion",
        "shipped-1": "retired",
    }


def test_an_unexpected_error_is_a_message_not_a_traceback(
    stub: StubApi, db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(data, "load_statistics", broken)
    at = _app().run()
    at.switch_page("views/statistics.py").run()
    assert not at.exception
    assert [e.value for e in at.error] == [ui.UNEXPECTED]


def test_a_misconfigured_app_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HIGH_SCORE_TZ", "Mars/Olympus_Mons")
    get_settings.cache_clear()
    at = _app().run()
    assert not at.exception
    assert "The web app is misconfigured" in at.error[0].value
    assert "Mars/Olympus_Mons" in at.error[0].value


def test_high_score_time_is_local(page: Page, stub: StubApi, db: Database) -> None:
    pid = _stored(db, 8, 0.97)
    created = get_prediction(db, pid).created_at.astimezone(ZoneInfo(TZ))
    at = _app().run()
    assert at.metric[0].value == "97.0%"
    assert f"an 8, at {created:%H:%M} ({TZ})" in _texts(at)
    assert created.date() == datetime.now(ZoneInfo(TZ)).date()


def test_feedback_with_the_database_down_says_so(
    page: Page, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_stub() as api:
        _configure(monkeypatch, api_url=api.url, database_url="postgresql://x@127.0.0.1:1/none")
        api.queue(Reply(201, prediction_body(digit=5, confidence=0.8, id=41)))
        page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
        at = _app().run()
        at.button(key="predict").click().run()
        at.button(key="right-41").click().run()
        assert len(at.error) == 1
        assert "could not be saved: the database cannot be reached" in at.error[0].value
        _no_failure(at)


def test_an_unexpected_error_while_saving_feedback_is_a_message(
    page: Page, stub: StubApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("a bug nobody foresaw")

    monkeypatch.setattr(data, "save_feedback", broken)
    stub.queue(Reply(201, prediction_body(digit=5, confidence=0.8, id=41)))
    page.drawing = Drawing(canvas_png(SEVEN), strokes=3)
    at = _app().run()
    at.button(key="predict").click().run()
    at.button(key="right-41").click().run()
    assert not at.exception
    assert [e.value for e in at.error] == [ui.UNEXPECTED]
