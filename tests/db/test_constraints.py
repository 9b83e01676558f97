import pytest

from digit_predictor.db import Database, RowRejected
from digit_predictor.db.queries import NewPrediction, insert_prediction

PROBS = [0.1] * 10


def _new(**overrides: object) -> NewPrediction:
    fields: dict[str, object] = {
        "predicted_digit": 3,
        "confidence": 0.9,
        "probabilities": PROBS,
        "image_data": b"\x89PNG fake",
        "model_version": "test-1",
    }
    fields.update(overrides)
    return NewPrediction(**fields)  # type: ignore[arg-type]


def test_a_valid_row_is_accepted(db: Database) -> None:
    row = insert_prediction(db, _new())
    assert row.id == 1
    assert row.true_digit is None


@pytest.mark.parametrize(
    "overrides",
    [
        {"predicted_digit": 10},
        {"predicted_digit": -1},
        {"confidence": 1.5},
        {"confidence": -0.1},
        {"probabilities": [0.1] * 11},
        {"probabilities": [0.1] * 9},
        {"probabilities": [2.0] + [0.0] * 9},
        {"image_data": b""},
        {"model_version": ""},
        {"latency_ms": -1.0},
        {"source": "x" * 65},
    ],
    ids=lambda o: ",".join(f"{k}={str(v)[:12]}" for k, v in o.items()),
)
def test_constraints_reject_out_of_range_values(db: Database, overrides: dict[str, object]) -> None:
    with pytest.raises(RowRejected):
        insert_prediction(db, _new(**overrides))
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM predictions")
        assert cur.fetchone() == (0,)


def test_true_digit_out_of_range_is_rejected(db: Database) -> None:
    row = insert_prediction(db, _new())
    with pytest.raises(RowRejected), db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            "UPDATE predictions SET true_digit = 10, feedback_at = now() WHERE id = %s",
            (row.id,),
        )


def test_feedback_needs_a_time(db: Database) -> None:
    row = insert_prediction(db, _new())
    with pytest.raises(RowRejected), db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE predictions SET true_digit = 3 WHERE id = %s", (row.id,))
