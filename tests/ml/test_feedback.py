"""Corrections from a real PostgreSQL become labelled digits: newest answer, duplicates resolved
and counted, the serving preprocessing, a holdout that never moves; the label guard and the gate
rules on known numbers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from digit_predictor.db import Database, queries
from digit_predictor.db.corrections import (
    Correction,
    count_corrections,
    iter_corrections,
    read_corrections,
)
from digit_predictor.ml import gate
from digit_predictor.ml.feedback import build_feedback_data, in_holdout, resolve
from digit_predictor.ml.label_guard import plausible_labels
from digit_predictor.ml.preprocess import preprocess_bytes
from digit_predictor.ml.synthetic_digits import to_png

from .feedback_rows import add_corrections, usps_drawings


def test_only_answered_rows_are_read_with_their_newest_answer(db: Database) -> None:
    drawings = usps_drawings(5)
    ids = add_corrections(db, drawings[:3])
    unanswered = queries.insert_prediction(
        db,
        queries.NewPrediction(
            predicted_digit=1,
            confidence=0.9,
            probabilities=[0.1] * 10,
            image_data=drawings[3][0],
            model_version="test",
        ),
    )
    queries.record_feedback(db, ids[0], 9)  # the person changed their mind
    rows = read_corrections(db)
    assert [r.id for r in rows] == ids
    assert unanswered.id not in [r.id for r in rows]
    assert rows[0].true_digit == 9
    assert rows[1].true_digit == drawings[1][1]
    assert rows[0].image_data == drawings[0][0]
    assert rows[0].source == "web" and rows[0].model_version == "test"
    # Keyset batches of 2 read the same rows as one batch.
    assert [r.id for r in iter_corrections(db, batch_rows=2)] == ids
    assert count_corrections(db) == 3
    assert count_corrections(db, answered_after=rows[0].feedback_at) == 0
    assert count_corrections(db, answered_after=rows[0].feedback_at - timedelta(seconds=60)) == 3


def _row(i: int, data: bytes, label: int, source: str | None, minute: int) -> Correction:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(minutes=minute)
    return Correction(i, data, label, 0, at, source, "v")


def test_identical_drawings_are_merged_resolved_or_dropped_and_counted() -> None:
    rows = [
        _row(1, b"a", 3, "web", 0),
        _row(2, b"a", 3, "app", 1),  # same bytes, same answer: merged
        _row(3, b"b", 4, "x", 0),
        _row(4, b"b", 4, "y", 1),
        _row(5, b"b", 9, "z", 2),  # two sources say 4, one says 9: 4 wins
        _row(6, b"c", 1, "x", 0),
        _row(7, b"c", 7, "y", 1),  # one against one: nobody can tell, dropped
        _row(8, b"d", 2, "x", 0),
        _row(9, b"d", 5, "x", 5),  # the same source's newer answer replaces its older one
    ]
    drawings, counts = resolve(rows)
    assert {d.image_data: d.label for d in drawings} == {b"a": 3, b"b": 4, b"d": 5}
    assert [d.first_id for d in drawings] == [1, 3, 8]
    assert counts.rows == 9 and counts.drawings == 3
    assert counts.conflicts_resolved == 1  # b (d is one source changing its mind)
    assert counts.conflicts_dropped == 1 and counts.conflict_rows_dropped == 2
    assert counts.duplicate_rows == 1 + 2 + 1


def test_the_holdout_is_a_stable_fifth_chosen_by_the_row_id() -> None:
    share = np.mean([in_holdout(i) for i in range(1, 20_001)])
    assert 0.19 < share < 0.21
    assert [in_holdout(i) for i in range(1, 200)] == [in_holdout(i) for i in range(1, 200)]


def test_feedback_data_uses_the_serving_preprocessing_and_drops_what_it_refuses(
    db: Database,
) -> None:
    drawings = usps_drawings(60)
    blank = to_png(np.zeros((280, 280), dtype=np.float32))
    add_corrections(db, [*drawings, (blank, 3), (b"\x89PNG\r\n\x1a\nbroken", 4)])
    data = build_feedback_data(read_corrections(db))
    counts = data.counts()
    assert counts["empty_dropped"] == 1 and counts["undecodable_dropped"] == 1
    assert counts["train"] + counts["holdout"] == 60
    assert counts["holdout"] == sum(in_holdout(i) for i in range(1, 61))
    assert set(data.holdout.first_ids.tolist()) == {i for i in range(1, 61) if in_holdout(i)}
    first = int(data.train.first_ids[0])
    assert np.array_equal(data.train.images[0], preprocess_bytes(drawings[first - 1][0]).image)
    assert data.train.labels[0] == drawings[first - 1][1]


def test_the_label_guard_keeps_labels_among_the_champions_top_k() -> None:
    probs = np.array(
        [
            [0.7, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0],
            [0.7, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0],
            [0.7, 0.2, 0.1, 0, 0, 0, 0, 0, 0, 0],
            [0.7, 0.2, 0.05, 0.05, 0, 0, 0, 0, 0, 0],
        ]
    )
    result = plausible_labels(probs, np.array([0, 2, 3, 3]), top_k=3)
    assert result.keep.tolist() == [True, True, False, False]
    assert (result.agreed, result.plausible, result.implausible) == (1, 1, 2)
    assert plausible_labels(probs, np.array([0, 2, 3, 3]), top_k=0).keep.all()


def _probs(preds: list[int], confidence: float) -> np.ndarray:
    out = np.full((len(preds), 10), (1 - confidence) / 9)
    out[np.arange(len(preds)), preds] = confidence
    return out


@pytest.mark.parametrize(
    ("champion", "challenger", "conf_a", "conf_b", "ok"),
    [
        ([0, 1, 2, 9], [0, 1, 2, 3], 0.95, 0.95, True),  # better
        ([0, 1, 2, 9], [0, 1, 9, 9], 0.95, 0.95, False),  # worse
        ([0, 1, 2, 9], [0, 1, 2, 9], 0.95, 0.5, True),  # equal, fewer confident mistakes
        ([0, 1, 2, 9], [0, 1, 2, 9], 0.95, 0.95, False),  # equal, as many
    ],
)
def test_the_feedback_rule(
    champion: list[int], challenger: list[int], conf_a: float, conf_b: float, ok: bool
) -> None:
    labels = np.array([0, 1, 2, 3])
    row = gate.feedback_row(_probs(champion, conf_a), _probs(challenger, conf_b), labels)
    assert row.ok is ok


def test_the_benchmark_rules_allow_exactly_the_stated_drops() -> None:
    labels = np.zeros(1000, dtype=np.int64)
    right = _probs([0] * 1000, 0.9)

    def with_mistakes(k: int) -> np.ndarray:
        return _probs([1] * k + [0] * (1000 - k), 0.9)

    assert gate.benchmark_row(gate.MNIST, right, with_mistakes(1), labels).ok  # -0.1 pt
    assert not gate.benchmark_row(gate.MNIST, right, with_mistakes(2), labels).ok
    assert gate.benchmark_row(gate.USPS, right, with_mistakes(3), labels).ok  # -0.3 pt
    assert not gate.benchmark_row(gate.USPS, right, with_mistakes(4), labels).ok
    result = gate.GateResult(
        [
            gate.feedback_row(with_mistakes(5), right, labels),
            gate.benchmark_row(gate.CANVAS, right, with_mistakes(4), labels),
        ]
    )
    assert not result.passed
    assert result.reason.startswith("the gate refused: canvas benchmark 100.00% -> 99.60%")
    assert [r["ok"] for r in result.as_dict()["rows"]] == [True, False]
    assert "FAILED" in result.table()
