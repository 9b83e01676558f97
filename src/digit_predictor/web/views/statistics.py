"""Statistics page: totals, accuracy on feedback, per digit, confusion, per day, per model
version and the reliability of the confidence. Everything comes from the roll-ups that
PostgreSQL keeps (docs/storage.md), so the page costs the same at a million predictions."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from digit_predictor.db.queries import Statistics
from digit_predictor.web import charts, data, resources
from digit_predictor.web.ui import db_unavailable_message, guarded
from digit_predictor.web.views.models import render_models_section

DAYS = 30


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _model_versions(stats: Statistics) -> None:
    st.subheader("Accuracy per model version")
    with_feedback = [v for v in stats.per_version if v.feedback_count]
    if not with_feedback:
        st.caption("Appears once people say whether predictions were right.")
        return
    st.caption(
        "On the predictions people answered, for each version that answered them, the "
        "first one to go live on the left."
    )
    st.altair_chart(charts.version_accuracy_chart(with_feedback), width="stretch")


def _reliability(stats: Statistics) -> None:
    st.subheader("Does the confidence mean what it says?")
    if not stats.feedback_count:
        st.caption("Appears once people say whether predictions were right.")
        return
    ece = stats.expected_calibration_error
    st.caption(
        "Predictions with feedback, grouped by the confidence shown: a bar on the dashed line "
        "means that confidence was right that often; below it, the model was over-confident. "
        f"Expected calibration error: {_percent(ece)}."
    )
    st.altair_chart(charts.reliability_chart(stats.reliability), width="stretch")


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

    versions, reliability = st.columns(2, gap="large")
    with versions:
        _model_versions(stats)
    with reliability:
        _reliability(stats)

    # The registry: the live version, since when, its gate table.
    render_models_section()


guarded(render)
