"""History page: every prediction in PostgreSQL, newest first, a page at a time."""

from __future__ import annotations

import streamlit as st

from digit_predictor.web import data, resources
from digit_predictor.web.ui import db_unavailable_message, guarded, plural

PAGE_SIZES = [10, 20, 50]


def render() -> None:
    st.title("History")
    settings = resources.settings()
    page_size = int(st.session_state.get("history_page_size", 20))
    page = int(st.session_state.get("history_page", 1))
    try:
        history = data.load_history(
            resources.database(), settings.tz, page=page, page_size=page_size
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
        f"{history.last_row} · times in {settings.high_score_tz}"
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
    pager, size = st.columns([4, 1], vertical_alignment="center")
    with pager:
        st.pagination(history.pages, default=history.page, key="history_page")
    with size:
        st.selectbox(
            "Rows per page",
            PAGE_SIZES,
            index=PAGE_SIZES.index(page_size) if page_size in PAGE_SIZES else 1,
            key="history_page_size",
        )


guarded(render)
