"""Predict as you draw, and "Why?", in a real browser against the real stack (as test_browser.py:
Debian's Chromium via Playwright, a real PostgreSQL, a real api, the real Streamlit app).

Live: with the toggle on, every stroke brings a new answer without pressing Predict. The time
from the stroke's mouse-up to the updated answer on the page is measured inside the browser and
printed with where it goes (the issue's target is a median of 300 ms; speed is reported, not
asserted: a shared machine's load moves it by 100 ms). Nothing is stored until Predict is
pressed, then exactly one row.

Why?: after Predict, the control shows the explanation over the 28x28 input, and after a
correction also the map for the person's digit.

    pytest -m browser -s tests/web/test_browser_live.py
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import psycopg2
import pytest

from tests.web import test_browser
from tests.web.test_browser import (
    DIGITS,
    SCREENSHOTS,
    UI_TIMEOUT_MS,
    Stroke,
    _answer,
    _draw,
    _latest_row,
    _no_traceback,
    _predict,
    _wait_idle,
    screenshot_on_failure,
)
from tests.web.web_server import WebServer

# The same stack (PostgreSQL, api, Streamlit) and browser as test_browser.py.
stack = test_browser.stack
page = test_browser.page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# 4 rounds of every digit (20 strokes): a median of 10 moved by tens of ms on a shared machine.
LIVE_ROUNDS = 4

# Stroke end (mouse-up anywhere in the page) and when the answer for the expected stroke count is
# on the page: the "Live answer for N strokes" note, then the digit, both from the new run
# (Streamlit marks an element left from an earlier run data-stale="true" until the new run sends
# it again). On the way, where the time goes: when the page first sends on Streamlit's websocket
# after the stroke (the canvas component hands its drawing over 200 ms after the stroke ends: its
# own debounce, a constant in its frontend that no st_canvas argument changes) and when the first
# message of the rerun comes back.
LIVE_TIMING_JS = """
() => {
  window.__live = {expect: null};
  if (window.__liveInstalled) return;
  window.__liveInstalled = true;
  document.addEventListener('mouseup', () => {
    const l = window.__live;
    if (l.expect !== null && l.up === undefined) l.up = performance.now();
  }, true);
  const send = WebSocket.prototype.send;
  WebSocket.prototype.send = function (data) {
    const l = window.__live;
    if (l.up !== undefined && l.sent === undefined) l.sent = performance.now();
    if (!this.__liveListening) {
      this.__liveListening = true;
      this.addEventListener('message', () => {
        const m = window.__live;
        if (m.sent !== undefined && m.reply === undefined) m.reply = performance.now();
      });
    }
    return send.call(this, data);
  };
  new MutationObserver(() => {
    const l = window.__live;
    if (l.expect === null || l.up === undefined || l.done !== undefined) return;
    const note = new RegExp('Live answer for ' + l.expect + ' strokes?:');
    // A part-drawn digit may be answered "not a digit": its best guess is the answer then.
    const digit = document.querySelector('.predicted-digit, .best-guess');
    const box = digit && digit.closest('[data-testid="stElementContainer"]');
    if (box && box.dataset.stale === 'false' && note.test(document.body.textContent)) {
      l.done = performance.now();
    }
  }).observe(document.body, {
    childList: true, subtree: true, characterData: true, attributes: true,
    attributeFilter: ['data-stale'],
  });
}
"""


def _p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20, method="inclusive")[-1]


def _rows(database_url: str) -> int:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM predictions")
            row = cur.fetchone()
    finally:
        conn.close()
    assert row is not None
    return int(row[0])


def _stroke(page: Any, stroke: Stroke) -> None:
    box = page.locator("canvas.upper-canvas").bounding_box()
    assert box is not None
    x, y = stroke[0]
    page.mouse.move(box["x"] + x, box["y"] + y)
    page.mouse.down()
    for x, y in stroke[1:]:
        page.mouse.move(box["x"] + x, box["y"] + y, steps=8)
    page.mouse.up()


@dataclass(frozen=True)
class LiveTiming:
    """ms from a stroke's mouse-up to: the canvas handing its drawing to Streamlit (the first
    websocket send), the rerun's first message back, the answer on the page."""

    sent: float
    reply: float
    done: float


def _live_stroke(page: Any, stroke: Stroke, strokes_on_canvas: int) -> LiveTiming:
    """Draw one stroke; the times from its mouse-up to the answer for `strokes_on_canvas`."""
    page.evaluate("k => { window.__live = {expect: k}; }", strokes_on_canvas)
    _stroke(page, stroke)
    page.wait_for_function("() => window.__live.done !== undefined")
    times = page.evaluate(
        "() => { const l = window.__live; return [l.sent - l.up, l.reply - l.up, l.done - l.up]; }"
    )
    _wait_idle(page)
    return LiveTiming(*(float(t) for t in times))


def _clear(page: Any) -> None:
    """Press Clear and wait for the fresh canvas (a stroke on the old one would be lost)."""
    canvas = page.locator("canvas.upper-canvas")
    canvas.evaluate("c => { c.__cleared = true; }")
    page.get_by_role("button", name="Clear", exact=True).click()
    page.get_by_text("Your prediction appears here.").wait_for()
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    # For a moment the old canvas and the new one are both on the page: wait for the new alone.
    while not canvas.evaluate_all("cs => cs.length === 1 && cs[0].__cleared !== true"):
        assert time.monotonic() < deadline, "Clear did not bring a fresh canvas"
        page.wait_for_timeout(50)
    _wait_idle(page)


def _shown_digit(page: Any) -> int:
    return int(page.locator(".predicted-digit").inner_text().strip())


def _open_draw_page(page: Any, web: WebServer) -> None:
    page.goto(web.url)
    page.get_by_role("heading", name="Draw a digit").wait_for()
    page.locator("canvas.upper-canvas").wait_for()
    _wait_idle(page)


def test_live_answers_follow_each_stroke_and_nothing_is_stored_until_predict(
    stack: dict[str, Any], page: Any
) -> None:
    with screenshot_on_failure(page, "live-failure.png"):
        _live_scenario(stack, page)


def _live_scenario(stack: dict[str, Any], page: Any) -> None:
    web: WebServer = stack["web"]
    database_url: str = stack["database_url"]
    _open_draw_page(page, web)
    switch = page.get_by_role("switch", name="Predict as I draw")
    assert not switch.is_checked()  # off unless asked for
    page.get_by_text("Predict as I draw", exact=True).click()
    page.wait_for_function("s => s.checked", arg=switch.element_handle())
    _wait_idle(page)
    page.evaluate(LIVE_TIMING_JS)

    timings: list[LiveTiming] = []
    finals: dict[int, int] = {}
    for _round in range(LIVE_ROUNDS):
        for true_digit, strokes in DIGITS.items():
            _clear(page)
            for count, stroke in enumerate(strokes, start=1):
                timings.append(_live_stroke(page, stroke, count))
            finals[true_digit] = _shown_digit(page)
            if stack["trained"]:
                assert finals[true_digit] == true_digit
            if true_digit == 7:
                page.screenshot(path=str(SCREENSHOTS / "draw-live.png"), full_page=True)
            _no_traceback(page)
            assert _rows(database_url) == 0, "a live answer was stored"

    done = [t.done for t in timings]
    median = statistics.median(done)
    print(
        f"\nstroke-end to live answer (browser, ms, {len(done)} strokes): "
        + ", ".join(f"{t:.0f}" for t in done)
        + f"; median {median:.0f}, p95 {_p95(done):.0f}, max {max(done):.0f}"
    )
    sent = statistics.median(t.sent for t in timings)
    reply = statistics.median(t.reply - t.sent for t in timings)
    rest = statistics.median(t.done - t.reply for t in timings)
    print(
        f"medians: stroke-end to the canvas sending its drawing {sent:.0f} ms (its debounce), "
        f"then to the rerun's first message {reply:.0f} ms, then to the answer shown {rest:.0f} ms"
    )

    # Predict stores the drawing on the canvas (the last 0), once, with the answer shown live.
    shown, _elapsed = _predict(page)
    assert shown == finals[0]
    assert _rows(database_url) == 1
    _row_id, predicted, truth, source = _latest_row(database_url)
    assert (predicted, truth, source) == (shown, None, "web")
    assert page.get_by_text("Live answer for").count() == 0  # the stored answer replaced it
    page.get_by_text("Was it right?").wait_for()
    _no_traceback(page)


def test_why_shows_the_map_for_the_answer_and_for_the_correction(
    stack: dict[str, Any], page: Any
) -> None:
    with screenshot_on_failure(page, "why-failure.png"):
        _why_scenario(stack, page)


def _loaded_image(page: Any, caption: str) -> dict[str, int]:
    """The natural size of the image shown above `caption`, once it has loaded."""
    figure = page.locator('[data-testid="stImage"]', has_text=caption)
    figure.wait_for()
    image = figure.locator("img")
    page.wait_for_function(
        "img => img.complete && img.naturalWidth > 0", arg=image.element_handle()
    )
    size: dict[str, int] = image.evaluate("img => ({w: img.naturalWidth, h: img.naturalHeight})")
    return size


def _why_scenario(stack: dict[str, Any], page: Any) -> None:
    web: WebServer = stack["web"]
    database_url: str = stack["database_url"]
    _open_draw_page(page, web)
    _draw(page, DIGITS[7])
    shown, _elapsed = _predict(page)
    row_id = _latest_row(database_url)[0]

    page.get_by_text("Why?", exact=True).click()
    first = f"Why {'an' if shown == 8 else 'a'} {shown}"
    assert _loaded_image(page, first) == {"w": 196, "h": 196}
    page.get_by_text("Red: ink that made the model think of this digit").wait_for()
    _wait_idle(page)
    page.screenshot(path=str(SCREENSHOTS / "draw-why.png"), full_page=True)

    # A correction: the map for the person's digit joins the first.
    corrected = 1 if shown != 1 else 4
    _answer(page, corrected, shown)
    second = f"What speaks for {'an' if corrected == 8 else 'a'} {corrected} (your answer)"
    assert _loaded_image(page, second) == {"w": 196, "h": 196}
    assert _loaded_image(page, first) == {"w": 196, "h": 196}
    _wait_idle(page)
    page.screenshot(path=str(SCREENSHOTS / "draw-why-corrected.png"), full_page=True)
    assert _latest_row(database_url) == (row_id, shown, corrected, "web")
    assert _rows(database_url) == 1
    _no_traceback(page)
