from __future__ import annotations

from datetime import date

from digit_predictor.db.queries import ConfidenceBin, DigitAccuracy, VersionAccuracy
from digit_predictor.web import charts


def test_probability_chart_has_ten_bars_and_highlights_the_prediction() -> None:
    probabilities = [0.01] * 10
    probabilities[4] = 0.91
    frame = charts.probability_frame(probabilities, 4)
    assert list(frame["digit"]) == [str(d) for d in range(10)]
    assert frame.loc[frame["predicted"], "digit"].tolist() == ["4"]
    spec = charts.probability_chart(probabilities, 4).to_dict()
    assert spec["mark"]["type"] == "bar"
    values = next(iter(spec["datasets"].values()))
    assert [v["probability"] for v in values] == probabilities


def test_confusion_heatmap_has_a_cell_for_every_pair() -> None:
    confusion = [[0] * 10 for _ in range(10)]
    confusion[7][1] = 3
    confusion[1][1] = 5
    frame = charts.confusion_frame(confusion)
    assert len(frame) == 100
    cell = frame[(frame["true"] == "7") & (frame["predicted"] == "1")]
    assert cell["count"].tolist() == [3]
    spec = charts.confusion_heatmap(confusion).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["rect", "text"]


def test_per_digit_chart_leaves_digits_without_feedback_empty() -> None:
    per_digit = [DigitAccuracy(digit=d, feedback_count=0, correct=0) for d in range(10)]
    per_digit[3] = DigitAccuracy(digit=3, feedback_count=4, correct=3)
    frame = charts.per_digit_frame(per_digit)
    assert frame.loc[3, "accuracy"] == 0.75
    assert frame["accuracy"].isna().sum() == 9
    assert charts.per_digit_chart(per_digit).to_dict()["mark"]["type"] == "bar"


def test_per_day_chart_fills_the_window_with_zeros() -> None:
    per_day = [(date(2026, 11, 18), 4), (date(2026, 11, 20), 9)]
    frame = charts.per_day_frame(per_day, days=5, today=date(2026, 11, 21))
    assert [d.date() for d in frame["day"]] == [date(2026, 11, d) for d in range(17, 22)]
    assert frame["predictions"].tolist() == [0, 4, 0, 9, 0]
    assert frame["label"].tolist()[-1] == "Nov 21"
    chart = charts.per_day_chart(per_day, days=5, today=date(2026, 11, 21))
    assert chart.to_dict()["mark"]["type"] == "bar"


def test_version_chart_keeps_the_order_versions_went_live() -> None:
    versions = [
        VersionAccuracy("cnn-b", date(2026, 10, 1), date(2026, 10, 9), 50, 20, 15),
        VersionAccuracy("cnn-a", date(2026, 10, 10), None, 30, 10, 9),
        VersionAccuracy("cnn-c", date(2026, 10, 20), None, 5, 0, 0),  # no feedback yet
    ]
    frame = charts.version_frame(versions)
    assert frame["version"].tolist() == ["cnn-b", "cnn-a"]
    assert frame["accuracy"].tolist() == [0.75, 0.9]
    spec = charts.version_accuracy_chart(versions).to_dict()
    assert spec["layer"][0]["encoding"]["x"]["sort"] == ["cnn-b", "cnn-a"]


def test_reliability_chart_has_a_bar_per_bin_with_feedback_and_the_diagonal() -> None:
    bins = [ConfidenceBin(i, 0, 0, 0.0) for i in range(15)]
    bins[14] = ConfidenceBin(14, 10, 9, 9.7)
    bins[9] = ConfidenceBin(9, 4, 1, 2.5)
    frame = charts.reliability_frame(bins)
    assert frame["bin"].tolist() == ["60%–67%", "93%–100%"]
    assert frame["accuracy"].tolist() == [0.25, 0.9]
    assert frame["confidence"].tolist() == [0.625, 0.97]
    spec = charts.reliability_chart(bins).to_dict()
    assert [layer["mark"]["type"] for layer in spec["layer"]] == ["bar", "line"]
