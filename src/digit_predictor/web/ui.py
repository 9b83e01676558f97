"""Small helpers the page scripts share."""

from __future__ import annotations

import logging
from collections.abc import Callable

import streamlit as st

log = logging.getLogger("digit_predictor.web")

UNEXPECTED = "Something went wrong on this page. It has been logged; reload the page to try again."


def db_unavailable_message(what: str) -> str:
    return (
        f"{what} is unavailable right now: the database cannot be reached. "
        "Drawing and predicting still work; this page comes back by itself once the database "
        "does."
    )


def guarded(render: Callable[[], None]) -> None:
    """Run a page; an unexpected error becomes a short message, never a traceback.

    Streamlit's own control flow (st.rerun, st.stop, page switches) uses BaseException
    subclasses and passes through untouched.
    """
    try:
        render()
    except Exception:
        log.exception("unexpected error while rendering a page")
        st.error(UNEXPECTED)


def a_digit(digit: int) -> str:
    """'a 7', 'an 8': the article as the digit is spoken."""
    return f"{'an' if digit == 8 else 'a'} {digit}"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")
