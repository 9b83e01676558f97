"""Altair charts for the pages: plain data in, a chart out (tested without a page)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import altair as alt
import pandas as pd

from digit_predictor.db.queries import DigitAccuracy

ACCENT = "#ff4b4b"
MUTED = "#8a8f98"
DIGITS = [str(d) for d in range(10)]


def probability_frame(probabilities: Sequence[float], predicted: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "digit": [str(d) for d in range(10)],
            "probability": [float(p) for p in probabilities],
            "predicted": [d == predicted for d in range(10)],
        }
    )


def probability_chart(probabilities: Sequence[float], predicted: int) -> alt.Chart:
    """Ten bars, the predicted digit highlighted."""
    frame = probability_frame(probabilities, predicted)
    chart: alt.Chart = (
        alt.Chart(frame, height=180)
        .mark_bar()
        .encode(
            x=alt.X("digit:N", title="digit", sort=None, axis=alt.Axis(labelAngle=0)),
            y=alt.Y(
                "probability:Q",
                title="probability",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%"),
            ),
            color=alt.condition(alt.datum.predicted, alt.value(ACCENT), alt.value(MUTED)),
            tooltip=[
                alt.Tooltip("digit:N"),
                alt.Tooltip("probability:Q", format=".2%"),
            ],
        )
    )
    return chart


def confusion_frame(confusion: Sequence[Sequence[int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"true": str(t), "predicted": str(p), "count": int(confusion[t][p])}
            for t in range(10)
            for p in range(10)
        ]
    )


def confusion_heatmap(confusion: Sequence[Sequence[int]]) -> alt.LayerChart:
    """Rows: the person's answer; columns: the prediction; a count in every non-empty cell."""
    frame = confusion_frame(confusion)
    base = alt.Chart(frame, height=360).encode(
        x=alt.X("predicted:O", title="predicted digit", sort=DIGITS, axis=alt.Axis(labelAngle=0)),
        y=alt.Y("true:O", title="true digit (from feedback)", sort=DIGITS),
    )
    cells = base.mark_rect().encode(
        color=alt.Color(
            "count:Q",
            title="count",
            scale=alt.Scale(scheme="blues"),
            legend=alt.Legend(format="d", tickMinStep=1),
        ),
        tooltip=["true:O", "predicted:O", "count:Q"],
    )
    peak = max((int(v) for row in confusion for v in row), default=0)
    labels = (
        base.mark_text(baseline="middle")
        .encode(
            text=alt.Text("count:Q"),
            color=alt.condition(alt.datum.count > peak / 2, alt.value("white"), alt.value("black")),
        )
        .transform_filter(alt.datum.count > 0)
    )
    return alt.LayerChart(layer=[cells, labels])


def per_digit_frame(per_digit: Sequence[DigitAccuracy]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "digit": str(d.digit),
                "accuracy": d.accuracy,
                "answers": d.feedback_count,
                "correct": d.correct,
            }
            for d in per_digit
        ]
    )


def per_digit_chart(per_digit: Sequence[DigitAccuracy]) -> alt.Chart:
    """Accuracy by the true digit; digits without feedback have no bar."""
    frame = per_digit_frame(per_digit)
    chart: alt.Chart = (
        alt.Chart(frame, height=220)
        .mark_bar(color=ACCENT)
        .encode(
            x=alt.X(
                "digit:N",
                title="true digit",
                scale=alt.Scale(domain=DIGITS),
                axis=alt.Axis(labelAngle=0),
            ),
            y=alt.Y(
                "accuracy:Q",
                title="accuracy",
                scale=alt.Scale(domain=[0, 1]),
                axis=alt.Axis(format="%"),
            ),
            tooltip=[
                "digit:N",
                alt.Tooltip("accuracy:Q", format=".1%"),
                "correct:Q",
                "answers:Q",
            ],
        )
    )
    return chart


def per_day_frame(per_day: Sequence[tuple[date, int]], *, days: int, today: date) -> pd.DataFrame:
    """One row per day of the window, oldest first; days without predictions count 0."""
    counts = dict(per_day)
    window = [today - timedelta(days=n) for n in range(days - 1, -1, -1)]
    return pd.DataFrame(
        {
            "day": [pd.Timestamp(d) for d in window],
            "label": [f"{d:%b} {d.day}" for d in window],
            "predictions": [counts.get(d, 0) for d in window],
        }
    )


def per_day_chart(per_day: Sequence[tuple[date, int]], *, days: int, today: date) -> alt.Chart:
    """A bar a day (ordinal, so a single day still gets a proper bar)."""
    frame = per_day_frame(per_day, days=days, today=today)
    chart: alt.Chart = (
        alt.Chart(frame, height=220)
        .mark_bar(color=MUTED)
        .encode(
            x=alt.X(
                "label:O",
                title="day",
                sort=None,
                axis=alt.Axis(labelAngle=0, labelOverlap="greedy"),
            ),
            y=alt.Y("predictions:Q", title="predictions", axis=alt.Axis(tickMinStep=1, format="d")),
            tooltip=[alt.Tooltip("day:T", format="%Y-%m-%d"), "predictions:Q"],
        )
    )
    return chart
