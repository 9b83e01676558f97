"""The whole product in a real browser: Debian's Chromium, driven by Playwright, against a real
PostgreSQL (tests/conftest.py), a real api (tests/servers.py) and the real Streamlit app.

It draws a 1, a 7 (in three strokes) and a 0 with the mouse, predicts, answers, checks the rows
in PostgreSQL, History and Statistics, then stops the api, checks the page says so, restarts it
and predicts again. Screenshots go to .artifacts/screenshots/; click-to-result times are printed.

    pytest -m browser -s tests/web/test_browser.py
"""

from __future__ import annotations

import itertools
import os
import re
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.web.views.draw import NO_DIGIT_YET
from tests.servers import ApiServer, api_env, make_test_model, start_api
from tests.web.web_server import WebServer, start_web

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / ".artifacts" / "screenshots"
LOGS = ROOT / ".artifacts" / "browser-logs"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TZ = "America/New_York"
UI_TIMEOUT_MS = 20_000

Stroke = list[tuple[float, float]]


def _ellipse(cx: float, cy: float, rx: float, ry: float, points: int = 36) -> Stroke:
    import math

    return [
        (cx + rx * math.sin(2 * math.pi * i / points), cy - ry * math.cos(2 * math.pi * i / points))
        for i in range(points + 3)  # a little past the start, as a hand closes a loop
    ]


# Canvas coordinates (280 x 280), drawn the way a person would.
DIGITS: dict[int, list[Stroke]] = {
    1: [[(128, 70), (150, 45), (148, 120), (146, 235)]],
    7: [
        [(70, 58), (140, 56), (208, 60)],  # the bar
        [(208, 60), (170, 140)],  # the stem, in two strokes: the mouse was let go half-way
        [(170, 140), (128, 236)],
    ],
    0: [_ellipse(140, 140, 62, 92)],
}

# Before each prediction: when the Predict click reaches the page, and when the result appears.
TIMING_JS = """
() => {
  window.__timing = {};
  if (window.__timingInstalled) return;
  window.__timingInstalled = true;
  document.addEventListener('click', (e) => {
    const b = e.target.closest('button');
    if (b && b.innerText.trim() === 'Predict') window.__timing.click = performance.now();
  }, true);
  new MutationObserver(() => {
    const t = window.__timing;
    if (t.click && !t.done) {
      if (document.querySelector('.predicted-digit')) { t.result = performance.now(); t.done = 1; }
      else if (document.querySelector('[data-testid="stAlert"]')) { t.alert = performance.now(); }
    }
  }).observe(document.body, {childList: true, subtree: true});
}
"""


def _model_path(tmp_path: Path) -> tuple[Path, bool]:
    """The trained model when there is one (then digits must be right), else untrained weights."""
    configured = Path(os.environ.get("MODEL_PATH") or DEFAULT_MODEL_PATH)
    if configured.is_file():
        return configured, True
    return make_test_model(tmp_path / "model"), False


def _restart_on_same_port(api: ApiServer) -> ApiServer:
    """A new api process at the old address (the web app's API_URL), as after a restart."""
    return start_api(api.env, log_dir=LOGS, port=api.port)


@pytest.fixture
def stack(own_database_url: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    # Its own database: this api registers and serves the trained model, which must not become
    # the champion of the session's shared database (its apis serve the untrained test model).
    database_url = own_database_url
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    LOGS.mkdir(parents=True, exist_ok=True)
    model, trained = _model_path(tmp_path)
    apis: list[ApiServer] = [start_api(api_env(database_url, model), log_dir=LOGS)]
    web: WebServer | None = None
    try:
        web = start_web(
            {"API_URL": apis[0].url, "DATABASE_URL": database_url, "HIGH_SCORE_TZ": TZ},
            log_dir=LOGS,
        )
        yield {"apis": apis, "web": web, "trained": trained, "database_url": database_url}
    finally:
        if web is not None:
            web.stop()
        for api in apis:
            api.cleanup()


@pytest.fixture
def page(stack: dict[str, Any]) -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"{CHROMIUM} is missing: apt-get install -y chromium (never `playwright install`)"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1200}, has_touch=True)
        pg = context.new_page()
        pg.set_default_timeout(UI_TIMEOUT_MS)
        try:
            yield pg
        finally:
            context.close()
            browser.close()


@contextmanager
def screenshot_on_failure(page: Any, name: str) -> Iterator[None]:
    """Keep what the page showed when a scenario failed (`.artifacts/screenshots/NAME`)."""
    try:
        yield
    except BaseException:
        page.screenshot(path=str(SCREENSHOTS / name))
        raise


def _wait_idle(page: Any) -> None:
    """Until Streamlit has finished the script run the last interaction started."""
    page.wait_for_timeout(150)
    page.locator('[data-testid="stApp"][data-test-script-state="notRunning"]').wait_for()


def _no_traceback(page: Any) -> None:
    assert page.locator('[data-testid="stException"]').count() == 0


def _go(page: Any, name: str) -> None:
    page.get_by_role("link", name=name, exact=True).click()
    page.get_by_role("heading", name="Draw a digit" if name == "Draw" else name).wait_for()
    _wait_idle(page)


def _draw(page: Any, strokes: list[Stroke]) -> None:
    canvas = page.locator("canvas.upper-canvas")
    canvas.wait_for()
    box = canvas.bounding_box()
    assert box is not None and round(box["width"]) == 280 and round(box["height"]) == 280
    for stroke in strokes:
        x, y = stroke[0]
        page.mouse.move(box["x"] + x, box["y"] + y)
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
        page.mouse.up()
        page.wait_for_timeout(60)
    _wait_idle(page)  # the canvas sends the drawing on mouse-up


def _touch_draw(page: Any, strokes: list[Stroke]) -> None:
    """Draw with a finger: real touch events through the DevTools protocol."""
    canvas = page.locator("canvas.upper-canvas")
    box = canvas.bounding_box()
    assert box is not None
    cdp = page.context.new_cdp_session(page)

    def touch(kind: str, x: float | None = None, y: float | None = None) -> None:
        points = [] if x is None else [{"x": box["x"] + x, "y": box["y"] + y}]
        cdp.send("Input.dispatchTouchEvent", {"type": kind, "touchPoints": points})

    for stroke in strokes:
        touch("touchStart", *stroke[0])
        for (x0, y0), (x1, y1) in itertools.pairwise(stroke):
            for i in range(1, 9):
                touch("touchMove", x0 + (x1 - x0) * i / 8, y0 + (y1 - y0) * i / 8)
        touch("touchEnd")
        page.wait_for_timeout(60)
    cdp.detach()
    _wait_idle(page)


def _predict(page: Any) -> tuple[int, float]:
    """Click Predict; return the digit shown and the click-to-result time in ms."""
    page.evaluate(TIMING_JS)
    page.get_by_role("button", name="Predict", exact=True).click()
    shown = page.locator(".predicted-digit")
    shown.wait_for()
    page.wait_for_function("() => window.__timing.done === 1")
    elapsed = page.evaluate("() => window.__timing.result - window.__timing.click")
    _wait_idle(page)
    return int(shown.inner_text().strip()), float(elapsed)


def latest_row(database_url: str, *columns: str) -> tuple[Any, ...]:
    """The newest prediction's `columns`, straight from PostgreSQL."""
    query = sql.SQL("SELECT {} FROM predictions ORDER BY id DESC LIMIT 1").format(
        sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute(query)
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return tuple(row)


def _latest_row(database_url: str) -> tuple[int, int, int | None, str | None]:
    row_id, digit, truth, source = latest_row(
        database_url, "id", "predicted_digit", "true_digit", "source"
    )
    return int(row_id), int(digit), truth, source


def _metrics(page: Any) -> dict[str, str]:
    out = {}
    page.locator('[data-testid="stMetric"]').nth(3).wait_for()
    for metric in page.locator('[data-testid="stMetric"]').all():
        label = metric.locator('[data-testid="stMetricLabel"]').inner_text().strip()
        out[label] = metric.locator('[data-testid="stMetricValue"]').inner_text().strip()
    return out


def _history_rows(page: Any) -> list[list[str]]:
    page.locator('[data-testid="stDataFrame"] [role="gridcell"]').first.wait_for(state="attached")
    rows: list[list[str]] = page.locator('[data-testid="stDataFrame"] [role="row"]').evaluate_all(
        "rows => rows.map(r => Array.from(r.children).map(c => c.textContent))"
    )
    return rows[1:]  # without the header


def _answer(page: Any, true_digit: int, shown: int) -> None:
    """Say what was drawn: one click when the model was right, else pick the digit and save."""
    if true_digit == shown:
        page.get_by_role("button", name=re.compile(rf"^.*Yes, it was an? {shown}$")).click()
    else:
        group = page.get_by_role("radiogroup", name="No, it was:")
        group.get_by_role("radio", name=str(true_digit), exact=True).click()
        _wait_idle(page)
        page.get_by_role("button", name="Save correction", exact=True).click()
    page.get_by_text(re.compile(rf"Saved: it was an? {true_digit}\.")).wait_for()
    _wait_idle(page)


def test_draw_predict_correct_history_statistics_and_api_outage(
    stack: dict[str, Any], page: Any
) -> None:
    with screenshot_on_failure(page, "failure.png"):
        _scenario(stack, page)


def _scenario(stack: dict[str, Any], page: Any) -> None:
    web: WebServer = stack["web"]
    database_url: str = stack["database_url"]

    # Statistics before anything was drawn.
    page.goto(web.url + "/statistics")
    page.get_by_role("heading", name="Statistics").wait_for()
    _wait_idle(page)
    assert _metrics(page)["Predictions"] == "0"

    _go(page, "Draw")
    page.get_by_text(NO_DIGIT_YET).wait_for()

    # An empty canvas: a message, and no request.
    page.get_by_role("button", name="Predict", exact=True).click()
    page.get_by_text("Draw a digit first").wait_for()
    _wait_idle(page)

    timings: list[float] = []
    shown_digits: dict[int, int] = {}
    for true_digit, strokes in DIGITS.items():
        page.get_by_role("button", name="Clear", exact=True).click()
        page.locator(".predicted-digit").wait_for(state="detached")
        page.get_by_text("Your prediction appears here.").wait_for()
        _wait_idle(page)
        _draw(page, strokes)
        shown, elapsed = _predict(page)
        timings.append(elapsed)
        shown_digits[true_digit] = shown

        row_id, predicted, truth, source = _latest_row(database_url)
        assert (predicted, truth, source) == (shown, None, "web")
        if stack["trained"]:
            assert shown == true_digit, f"drew a {true_digit}, the model said {shown}"
        # The high score reflects this prediction at once (it is at least as high).
        page.get_by_text("Today's high score").wait_for()
        if true_digit == 7:
            page.screenshot(path=str(SCREENSHOTS / "draw-result.png"))

        if true_digit == 0:
            # Change of mind: first a wrong answer, then the right one.
            wrong = next(d for d in (5, 6) if d != shown)
            _answer(page, wrong, shown)
            assert _latest_row(database_url)[2] == wrong
        _answer(page, true_digit, shown)
        assert _latest_row(database_url) == (row_id, shown, true_digit, "web")
        if true_digit == 7:
            page.screenshot(path=str(SCREENSHOTS / "draw-feedback.png"))
        _no_traceback(page)

    median = statistics.median(timings)
    print(
        "\nclick-to-result (browser, ms): "
        + ", ".join(f"{d}: {t:.0f}" for d, t in zip(DIGITS, timings, strict=True))
        + f"; median {median:.0f}"
    )

    # History: newest first, with what was predicted and what people said.
    _go(page, "History")
    page.get_by_text("3 predictions, newest first").wait_for()
    rows = _history_rows(page)
    assert len(rows) == 3
    for row, true_digit in zip(rows, [0, 7, 1], strict=True):
        thumbnail, _when, said_digit, _conf, told_digit, result, _row_id = row
        assert thumbnail.startswith("data:image/png;base64,")
        assert said_digit == str(shown_digits[true_digit]) and told_digit == str(true_digit)
        assert result == ("✓ right" if shown_digits[true_digit] == true_digit else "✗ wrong")
    page.wait_for_timeout(300)  # let the thumbnails paint
    page.screenshot(path=str(SCREENSHOTS / "history.png"))
    _no_traceback(page)

    # Statistics changed.
    _go(page, "Statistics")
    metrics = _metrics(page)
    right = sum(shown_digits[d] == d for d in DIGITS)
    assert metrics["Predictions"] == "3" and metrics["With feedback"] == "3"
    assert metrics["Accuracy on feedback"] == f"{right / 3:.1%}"
    page.locator('[data-testid="stVegaLiteChart"]').nth(2).wait_for()
    page.wait_for_timeout(500)
    page.screenshot(path=str(SCREENSHOTS / "statistics.png"))
    _no_traceback(page)

    # The api goes away mid-way: the page says so, and nothing else breaks.
    _go(page, "Draw")
    apis: list[ApiServer] = stack["apis"]
    apis[0].stop()
    _draw(page, DIGITS[1])
    page.evaluate(TIMING_JS)
    page.get_by_role("button", name="Predict", exact=True).click()
    alert = page.get_by_text("The prediction service is not reachable right now")
    alert.wait_for()
    _wait_idle(page)
    assert page.locator(".predicted-digit").count() == 0
    page.screenshot(path=str(SCREENSHOTS / "draw-api-down.png"))
    _no_traceback(page)

    # It comes back on the same address: predicting works again without reloading the page.
    apis.append(_restart_on_same_port(apis[0]))
    shown, recovered_ms = _predict(page)
    assert alert.count() == 0
    assert _latest_row(database_url)[1] == shown
    if stack["trained"]:
        assert shown == 1
    print(f"click-to-result after the api restart: {recovered_ms:.0f} ms")
    page.screenshot(path=str(SCREENSHOTS / "draw-api-back.png"))
    _no_traceback(page)

    # A finger works as well as a mouse.
    page.get_by_role("button", name="Clear", exact=True).click()
    page.locator(".predicted-digit").wait_for(state="detached")
    _wait_idle(page)
    _touch_draw(page, DIGITS[7])
    shown, _ = _predict(page)
    assert _latest_row(database_url)[1] == shown
    if stack["trained"]:
        assert shown == 7
    page.screenshot(path=str(SCREENSHOTS / "draw-touch.png"))
    _no_traceback(page)
