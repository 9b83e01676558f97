"""History page: every prediction in PostgreSQL, newest first, a page at a time.

Pages are read with a cursor (the last row's id), so a page near the oldest rows is as fast
as the first; the cursors of the pages walked through stay in the session, for "Newer".
"""

from __future__ import annotations

import streamlit as st

from digit_predictor.web import data, resources
from digit_predictor.web.ui import db_unavailable_message, guarded, plural

PAGE_SIZES = [10, 20, 50]
CURSORS = "history_cursors"  # `before` of every page from the newest to the one shown


def _go_older(next_before: int) -> None:
    st.session_state[CURSORS] = [*st.session_state.get(CURSORS, [None]), next_before]


def _go_newer() -> None:
    st.session_state[CURSORS] = st.session_state.get(CURSORS, [None])[:-1] or [None]


def _go_newest() -> None:
    st.session_state[CURSORS] = [None]


def render() -> None:
    st.title("History")
    settings = resources.settings()
    page_size = int(st.session_state.get("history_page_size", 20))
    if st.session_state.get("history_shown_size") != page_size:
        _go_newest()  # a new page size starts again from the newest rows
        st.session_state["history_shown_size"] = page_size
    cursors: list[int | None] = st.session_state.get(CURSORS) or [None]
    try:
        try:
            history = data.load_history(
                resources.database(),
                settings.tz,
                before=cursors[-1],
                page_size=page_size,
                page=len(cursors),
            )
        except data.PredictionNotFound:
            # The row the cursor pointed at was deleted: start again from the newest.
            _go_newest()
            history = data.load_history(
                resources.database(), settings.tz, before=None, page_size=page_size
            )
    except data.DatabaseUnavailable:
        st.warning(db_unavailable_message("History"), icon=":material/cloud_off:")
        st.button("Try again", key="history-retry")
        return

    if history.total == 0:
        st.info("No predictions yet: draw a digit on the Draw page.", icon=":material/draw:")
        return

    st.caption(
        f"{plural(history.total, 'prediction')}, newest first · showing {history.first_row}–"
        f"{history.last_row} · page {history.page} of {history.pages} · times in "
        f"{settings.high_score_tz}"
    )
    st.dataframe(
        history.frame,
        hide_index=True,
        row_height=64,
        key="history-table",
        column_config={
            "Drawing": st.column_config.ImageColumn("Drawing", width="small"),
            "Time": st.column_config.TextColumn("Time"),
            "Predicted": st.column_config.NumberColumn("Predicted", format="%d"),
            "Confidence": st.column_config.ProgressColumn(
                "Confidence", min_value=0.0, max_value=1.0, format="percent"
            ),
            "True digit": st.column_config.TextColumn("True digit"),
            "Result": st.column_config.TextColumn("Right?"),
            "ID": st.column_config.NumberColumn("ID", format="%d"),
        },
    )
    newest, newer, older, size = st.columns([1, 1, 1, 2], vertical_alignment="bottom")
    first_page = history.before is None
    newest.button(
        "Newest", key="history-newest", on_click=_go_newest, disabled=first_page, width="stretch"
    )
    newer.button(
        "← Newer", key="history-newer", on_click=_go_newer, disabled=first_page, width="stretch"
    )
    older.button(
        "Older →",
        key="history-older",
        on_click=_go_older,
        args=(history.next_before,),
        disabled=history.next_before is None,
        width="stretch",
    )
    size.selectbox(
        "Rows per page",
        PAGE_SIZES,
        index=PAGE_SIZES.index(page_size) if page_size in PAGE_SIZES else 1,
        key="history_page_size",
    )


guarded(render)
