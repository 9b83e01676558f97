"""Altair charts for the pages: plain data in, a chart out (tested without a page)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date, timedelta

import altair as alt
import pandas as pd

from digit_predictor.db.queries import ConfidenceBin, DigitAccuracy, VersionAccuracy

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


def version_frame(per_version: Sequence[VersionAccuracy]) -> pd.DataFrame:
    """One row per model version with feedback, in the order they first answered."""
    return pd.DataFrame(
        [
            {
                "version": v.model_version,
                "accuracy": v.accuracy,
                "answers": v.feedback_count,
                "correct": v.correct,
                "predictions": v.predictions,
                "first day": "" if v.first_day is None else v.first_day.isoformat(),
            }
            for v in per_version
            if v.feedback_count
        ],
        columns=["version", "accuracy", "answers", "correct", "predictions", "first day"],
    )


def version_accuracy_chart(per_version: Sequence[VersionAccuracy]) -> alt.LayerChart:
    """Accuracy on feedback per model version, oldest version left: the model improving."""
    frame = version_frame(per_version)
    order = frame["version"].tolist()
    base = alt.Chart(frame, height=220).encode(
        x=alt.X("version:N", title="model version", sort=order, axis=alt.Axis(labelAngle=0)),
        y=alt.Y(
            "accuracy:Q",
            title="accuracy on feedback",
            scale=alt.Scale(domain=[0, 1]),
            axis=alt.Axis(format="%"),
        ),
        tooltip=[
            "version:N",
            alt.Tooltip("accuracy:Q", format=".1%"),
            "correct:Q",
            "answers:Q",
            "predictions:Q",
            "first day:N",
        ],
    )
    bars = base.mark_bar(color=ACCENT)
    labels = base.mark_text(dy=-8).encode(text=alt.Text("accuracy:Q", format=".1%"))
    return alt.LayerChart(layer=[bars, labels])


def reliability_frame(bins: Sequence[ConfidenceBin]) -> pd.DataFrame:
    """The confidence bins that hold feedback: what the model said vs how often it was right."""
    return pd.DataFrame(
        [
            {
                "bin": f"{b.lower:.0%}–{b.upper:.0%}",
                "lower": b.lower,
                "upper": b.upper,
                "middle": (b.lower + b.upper) / 2,
                "accuracy": b.accuracy,
                "confidence": b.mean_confidence,
                "answers": b.feedback_count,
            }
            for b in bins
            if b.feedback_count
        ],
        columns=["bin", "lower", "upper", "middle", "accuracy", "confidence", "answers"],
    )


def reliability_chart(bins: Sequence[ConfidenceBin]) -> alt.LayerChart:
    """Reliability diagram: a bar per confidence bin at its accuracy; on the diagonal when the
    confidence means what it says, below it when the model is over-confident."""
    frame = reliability_frame(bins)
    scale = alt.Scale(domain=[0, 1])
    x = alt.X("lower:Q", title="confidence the model gave", scale=scale, axis=alt.Axis(format="%"))
    bars = (
        alt.Chart(frame, height=260)
        .mark_bar(color=ACCENT, opacity=0.85)
        .encode(
            x=x,
            x2="upper:Q",
            y=alt.Y(
                "accuracy:Q", title="share right (feedback)", scale=scale, axis=alt.Axis(format="%")
            ),
            tooltip=[
                alt.Tooltip("bin:N", title="confidence bin"),
                alt.Tooltip("confidence:Q", format=".1%", title="mean confidence"),
                alt.Tooltip("accuracy:Q", format=".1%", title="share right"),
                "answers:Q",
            ],
        )
    )
    diagonal = (
        alt.Chart(pd.DataFrame({"p": [0.0, 1.0]}))
        .mark_line(color=MUTED, strokeDash=[4, 4])
        .encode(x=alt.X("p:Q", scale=scale), y=alt.Y("p:Q", scale=scale))
    )
    return alt.LayerChart(layer=[bars, diagonal])
