"""Statistics page: totals, accuracy on feedback, per-digit accuracy, confusion, per day."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from digit_predictor.web import charts, data, resources
from digit_predictor.web.ui import db_unavailable_message, guarded
from digit_predictor.web.views.models import render_models_section

DAYS = 30


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def render() -> None:
    st.title("Statistics")
    settings = resources.settings()
    try:
        stats = data.load_statistics(resources.database(), settings.tz, days=DAYS)
    except data.DatabaseUnavailable:
        st.warning(db_unavailable_message("Statistics"), icon=":material/cloud_off:")
        st.button("Try again", key="statistics-retry")
        return

    total, answered, accuracy, confidence = st.columns(4)
    total.metric("Predictions", f"{stats.total_predictions}")
    answered.metric("With feedback", f"{stats.feedback_count}")
    accuracy.metric(
        "Accuracy on feedback",
        _percent(stats.accuracy),
        help="Share of the predictions people answered that were right.",
    )
    confidence.metric("Mean confidence", _percent(stats.mean_confidence))

    if stats.total_predictions == 0:
        st.info("No predictions yet: draw a digit on the Draw page.", icon=":material/draw:")
        render_models_section()
        return

    left, right = st.columns(2, gap="large")
    with left:
        st.subheader("Accuracy per digit")
        if stats.feedback_count:
            st.altair_chart(charts.per_digit_chart(stats.per_digit), width="stretch")
        else:
            st.caption("Appears once people say whether predictions were right.")
        st.subheader("Predictions per day")
        st.caption(f"The last {DAYS} days, in {settings.high_score_tz}.")
        today = datetime.now(settings.tz).date()
        st.altair_chart(
            charts.per_day_chart(stats.per_day, days=DAYS, today=today), width="stretch"
        )
    with right:
        st.subheader("Confusion matrix")
        if stats.feedback_count:
            st.caption("Rows: the digit people said they drew. Columns: the prediction.")
            st.altair_chart(charts.confusion_heatmap(stats.confusion), width="stretch")
        else:
            st.caption("Appears once people correct predictions.")
    render_models_section()


guarded(render)
