"""Every query the app runs. The api and the web app both call these; nothing else writes SQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2.extras

from digit_predictor.db.pool import Database

psycopg2.extras.register_uuid()  # type: ignore[no-untyped-call]

# Columns of a prediction without the image bytes, which only some callers need.
_COLUMNS = (
    "id, request_id, created_at, predicted_digit, confidence, probabilities, "
    "true_digit, feedback_at, model_version, latency_ms, source"
)


class PredictionNotFound(LookupError):
    def __init__(self, prediction_id: int) -> None:
        super().__init__(f"no prediction with id {prediction_id}")
        self.prediction_id = prediction_id


@dataclass(frozen=True)
class NewPrediction:
    """A row to insert. Its fields are the columns written, by name and in order
    (`NEW_PREDICTION_COLUMNS`): a new column is one new field here."""

    predicted_digit: int
    confidence: float
    probabilities: Sequence[float]
    image_data: bytes
    model_version: str
    latency_ms: float | None = None
    source: str | None = None
    # Set by the api so that a retried write (after a database outage) stays one row.
    request_id: uuid.UUID = field(default_factory=uuid.uuid4)
    created_at: datetime | None = None  # None: the database's now()

    def values(self) -> tuple[Any, ...]:
        return tuple(
            list(v) if isinstance(v, Sequence) and not isinstance(v, str | bytes) else v
            for v in (getattr(self, name) for name in NEW_PREDICTION_COLUMNS)
        )


NEW_PREDICTION_COLUMNS = tuple(f.name for f in fields(NewPrediction))
_INSERT = f"""INSERT INTO predictions ({", ".join(NEW_PREDICTION_COLUMNS)}) VALUES %s
              ON CONFLICT (request_id) DO NOTHING"""
_ROW_TEMPLATE = "({})".format(
    ", ".join("COALESCE(%s, now())" if c == "created_at" else "%s" for c in NEW_PREDICTION_COLUMNS)
)


@dataclass(frozen=True)
class Prediction:
    id: int
    request_id: uuid.UUID
    created_at: datetime
    predicted_digit: int
    confidence: float
    probabilities: list[float]
    true_digit: int | None
    feedback_at: datetime | None
    model_version: str
    latency_ms: float | None
    source: str | None
    image_data: bytes | None = None

    @property
    def is_correct(self) -> bool | None:
        return None if self.true_digit is None else self.true_digit == self.predicted_digit


@dataclass(frozen=True)
class DigitAccuracy:
    digit: int
    feedback_count: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.feedback_count if self.feedback_count else None


@dataclass(frozen=True)
class Statistics:
    total_predictions: int
    feedback_count: int
    correct_count: int
    mean_confidence: float | None
    per_digit: list[DigitAccuracy]  # by the true digit, 0..9
    confusion: list[list[int]]  # confusion[true][predicted]
    per_day: list[tuple[date, int]]  # local days in the high-score time zone, oldest first

    @property
    def accuracy(self) -> float | None:
        return self.correct_count / self.feedback_count if self.feedback_count else None


def _prediction(row: Sequence[Any], *, with_image: bool = False) -> Prediction:
    image = bytes(row[11]) if with_image else None
    return Prediction(
        id=row[0],
        request_id=row[1],
        created_at=row[2],
        predicted_digit=row[3],
        confidence=row[4],
        probabilities=list(row[5]),
        true_digit=row[6],
        feedback_at=row[7],
        model_version=row[8],
        latency_ms=row[9],
        source=row[10],
        image_data=image,
    )


def insert_predictions(db: Database, rows: Sequence[NewPrediction]) -> dict[uuid.UUID, int]:
    """Store rows in one statement and one transaction; return each request_id's row id.

    Idempotent on request_id: a row already stored (a retry after an ambiguous commit) is not
    written again, and its existing id is returned.
    """
    if not rows:
        return {}
    # One statement is atomic by itself: autocommit spares the BEGIN and COMMIT round trips.
    with db.connection(autocommit=True) as conn, conn.cursor() as cur:
        returned = psycopg2.extras.execute_values(
            cur,
            _INSERT + " RETURNING request_id, id",
            [row.values() for row in rows],
            template=_ROW_TEMPLATE,
            page_size=len(rows),
            fetch=True,
        )
        ids: dict[uuid.UUID, int] = {r[0]: int(r[1]) for r in returned}
        missing = [row.request_id for row in rows if row.request_id not in ids]
        if missing:
            cur.execute(
                "SELECT request_id, id FROM predictions WHERE request_id = ANY(%s)", (missing,)
            )
            ids.update((r[0], int(r[1])) for r in cur.fetchall())
    return ids


def insert_prediction(db: Database, new: NewPrediction) -> Prediction:
    """Store one prediction (tests, tools); the api goes through `insert_predictions`."""
    row_id = insert_predictions(db, [new])[new.request_id]
    return get_prediction(db, row_id)


def record_feedback(db: Database, prediction_id: int, true_digit: int) -> Prediction:
    """Set the person's answer; a later answer replaces an earlier one and moves feedback_at."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"""UPDATE predictions SET true_digit = %s, feedback_at = clock_timestamp()
                WHERE id = %s RETURNING {_COLUMNS}""",
            (true_digit, prediction_id),
        )
        row = cur.fetchone()
    if row is None:
        raise PredictionNotFound(prediction_id)
    return _prediction(row)


def get_prediction(db: Database, prediction_id: int) -> Prediction:
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(f"SELECT {_COLUMNS} FROM predictions WHERE id = %s", (prediction_id,))
        row = cur.fetchone()
    if row is None:
        raise PredictionNotFound(prediction_id)
    return _prediction(row)


def get_image(db: Database, prediction_id: int) -> bytes:
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT image_data FROM predictions WHERE id = %s", (prediction_id,))
        row = cur.fetchone()
    if row is None:
        raise PredictionNotFound(prediction_id)
    return bytes(row[0])


def recent_predictions(
    db: Database, *, limit: int = 20, offset: int = 0, with_images: bool = False
) -> list[Prediction]:
    """Newest first. Images only when asked for: they are the bulk of each row."""
    columns = _COLUMNS + (", image_data" if with_images else "")
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"""SELECT {columns} FROM predictions
                ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s""",
            (limit, offset),
        )
        rows = cur.fetchall()
    return [_prediction(row, with_image=with_images) for row in rows]


def count_predictions(db: Database) -> int:
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM predictions")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def local_day_window(tz: ZoneInfo, now: datetime | None = None) -> tuple[datetime, datetime]:
    """[last local midnight, next local midnight) in `tz`, as aware datetimes.

    Built from the local calendar date, not by adding 24 hours, so days of 23 and 25 hours
    (daylight-saving changes) come out right.
    """
    local_now = (now or datetime.now(tz)).astimezone(tz)
    today = local_now.date()
    start = datetime.combine(today, time(0), tzinfo=tz)
    end = datetime.combine(today + timedelta(days=1), time(0), tzinfo=tz)
    return start, end


def high_score_today(db: Database, tz: ZoneInfo, now: datetime | None = None) -> Prediction | None:
    """The most confident prediction since the last local midnight (earliest wins a tie)."""
    start, end = local_day_window(tz, now)
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"""SELECT {_COLUMNS} FROM predictions
                WHERE created_at >= %s AND created_at < %s
                ORDER BY confidence DESC, created_at ASC, id ASC LIMIT 1""",
            (start, end),
        )
        row = cur.fetchone()
    return _prediction(row) if row else None


def statistics(db: Database, tz: ZoneInfo, *, days: int = 30) -> Statistics:
    """Totals, accuracy on corrected predictions, confusion counts and a per-day series."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT count(*), count(true_digit),
                      count(*) FILTER (WHERE true_digit = predicted_digit), avg(confidence)
               FROM predictions"""
        )
        totals = cur.fetchone()
        assert totals is not None
        cur.execute(
            """SELECT true_digit, predicted_digit, count(*) FROM predictions
               WHERE true_digit IS NOT NULL GROUP BY 1, 2"""
        )
        pairs = cur.fetchall()
        first_day = datetime.now(tz).date() - timedelta(days=days - 1)
        cur.execute(
            """SELECT (created_at AT TIME ZONE %s)::date AS day, count(*) FROM predictions
               WHERE created_at >= %s GROUP BY 1 ORDER BY 1""",
            (tz.key, datetime.combine(first_day, time(0), tzinfo=tz)),
        )
        per_day = [(row[0], int(row[1])) for row in cur.fetchall()]

    confusion = [[0] * 10 for _ in range(10)]
    for true_digit, predicted_digit, count in pairs:
        confusion[true_digit][predicted_digit] = int(count)
    per_digit = [
        DigitAccuracy(digit=d, feedback_count=sum(confusion[d]), correct=confusion[d][d])
        for d in range(10)
    ]
    return Statistics(
        total_predictions=int(totals[0]),
        feedback_count=int(totals[1]),
        correct_count=int(totals[2]),
        mean_confidence=float(totals[3]) if totals[3] is not None else None,
        per_digit=per_digit,
        confusion=confusion,
        per_day=per_day,
    )
