"""A drawing that is not a digit, in a real browser against the real stack (as test_browser.py:
Debian's Chromium via Playwright, a real PostgreSQL, a real api with the shipped model, the real
Streamlit app).

A house drawn with the mouse: the page says plainly that it does not look like a digit, shows
the best guess only small, stores the row as not a digit, still takes a correction, and today's
high score leaves it out; a 7 drawn next is answered as usual and becomes the high score.

    pytest -m browser -s tests/web/test_browser_trust.py
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from digit_predictor.web.views.draw import NO_DIGIT_YET, NOT_A_DIGIT
from tests.web import test_browser
from tests.web.test_browser import (
    DIGITS,
    SCREENSHOTS,
    Stroke,
    _answer,
    _draw,
    _no_traceback,
    _predict,
    _wait_idle,
    latest_row,
    screenshot_on_failure,
)
from tests.web.web_server import WebServer

# The same stack (PostgreSQL, api, Streamlit) and browser as test_browser.py.
stack = test_browser.stack
page = test_browser.page

pytestmark = [pytest.mark.browser, pytest.mark.timeout(300)]

# Walls and floor in one stroke, the roof in another, then the door: as a child draws a house.
HOUSE: list[Stroke] = [
    [(70, 130), (70, 240), (210, 240), (210, 130), (70, 130)],
    [(55, 140), (140, 45), (225, 140)],
    [(120, 240), (120, 185), (160, 185), (160, 240)],
]


def test_a_house_is_not_a_digit_and_does_not_become_the_high_score(
    stack: dict[str, Any], page: Any
) -> None:
    if not stack["trained"]:
        pytest.skip("needs the shipped model: untrained weights have no non-digit detector")
    with screenshot_on_failure(page, "not-a-digit-failure.png"):
        _scenario(stack, page)


def _scenario(stack: dict[str, Any], page: Any) -> None:
    web: WebServer = stack["web"]
    database_url: str = stack["database_url"]
    page.goto(web.url)
    page.get_by_role("heading", name="Draw a digit").wait_for()
    _wait_idle(page)
    page.get_by_text(NO_DIGIT_YET).wait_for()

    _draw(page, HOUSE)
    page.get_by_role("button", name="Predict", exact=True).click()
    page.get_by_text(NOT_A_DIGIT).wait_for()
    _wait_idle(page)
    guess = re.fullmatch(
        r"Best guess, if it is a digit: (\d) \(\d+\.\d%\)", page.locator(".best-guess").inner_text()
    )
    assert guess is not None
    assert page.locator(".predicted-digit").count() == 0
    row_id, is_digit, ood_score = latest_row(database_url, "id", "is_digit", "ood_score")
    assert is_digit is False and ood_score is not None and ood_score > 0.5
    # Stored, but not today's high score: the only row of the day does not count.
    page.get_by_text(NO_DIGIT_YET).wait_for()
    page.locator('[data-testid="stVegaLiteChart"]').wait_for()  # all ten probabilities, still
    page.wait_for_timeout(300)  # let the chart paint
    page.screenshot(path=str(SCREENSHOTS / "draw-not-a-digit.png"))

    # A person may insist it is a digit: the correction is taken as for any answer.
    _answer(page, 4, shown=int(guess.group(1)))
    assert latest_row(database_url, "id", "true_digit") == (row_id, 4)
    _no_traceback(page)

    # A real digit next: the big answer, no warning, and it is the high score.
    page.get_by_role("button", name="Clear", exact=True).click()
    page.get_by_text("Your prediction appears here.").wait_for()
    _wait_idle(page)
    _draw(page, DIGITS[7])
    shown, _ = _predict(page)
    assert shown == 7
    assert page.get_by_text(NOT_A_DIGIT).count() == 0
    assert latest_row(database_url, "is_digit") == (True,)
    page.get_by_text(re.compile(r"^a 7, at \d\d:\d\d")).wait_for()
    _no_traceback(page)
