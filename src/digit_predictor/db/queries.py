"""Every query the app runs. The api and the web app both call these; nothing else writes SQL."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2.extras

from digit_predictor.db.pool import Database

psycopg2.extras.register_uuid()  # type: ignore[no-untyped-call]
log = logging.getLogger(__name__)

# Must match confidence_bin() in migration 0003 (15 equal bins, as for the ECE in the card).
CONFIDENCE_BINS = 15

# Columns of a prediction without the image bytes, which only some callers need.
_COLUMNS = (
    "id, request_id, created_at, predicted_digit, confidence, probabilities, "
    "true_digit, feedback_at, model_version, latency_ms, source, is_digit, ood_score"
)


class PredictionNotFound(LookupError):
    def __init__(self, prediction_id: int) -> None:
        super().__init__(f"no prediction with id {prediction_id}")
        self.prediction_id = prediction_id


class DrawingRemoved(LookupError):
    """The row is kept but its drawing was dropped by the retention job (prune-drawings)."""

    def __init__(self, prediction_id: int) -> None:
        super().__init__(
            f"the drawing of prediction {prediction_id} was removed by the retention policy "
            "(DRAWING_RETENTION_DAYS); the prediction itself is kept"
        )
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
    # The non-digit detector's verdict; None when the model has none (old weights).
    is_digit: bool | None = None
    ood_score: float | None = None

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
    is_digit: bool | None = None  # null for rows stored before the non-digit detector
    ood_score: float | None = None

    @property
    def is_correct(self) -> bool | None:
        return None if self.true_digit is None else self.true_digit == self.predicted_digit


def _share(part: float, whole: int) -> float | None:
    """part / whole, or None when nothing was counted (no answer is not 0% right)."""
    return part / whole if whole else None


@dataclass(frozen=True)
class DigitAccuracy:
    digit: int
    feedback_count: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return _share(self.correct, self.feedback_count)


@dataclass(frozen=True)
class VersionAccuracy:
    """How one model version did on the predictions people answered."""

    model_version: str
    first_day: date | None  # local days on which it answered (from the daily roll-up)
    last_day: date | None
    predictions: int
    feedback_count: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        return _share(self.correct, self.feedback_count)


@dataclass(frozen=True)
class ConfidenceBin:
    """One of CONFIDENCE_BINS equal bins of confidence, over the predictions with feedback."""

    index: int
    feedback_count: int
    correct: int
    confidence_sum: float

    @property
    def lower(self) -> float:
        return self.index / CONFIDENCE_BINS

    @property
    def upper(self) -> float:
        return (self.index + 1) / CONFIDENCE_BINS

    @property
    def accuracy(self) -> float | None:
        return _share(self.correct, self.feedback_count)

    @property
    def mean_confidence(self) -> float | None:
        return _share(self.confidence_sum, self.feedback_count)


@dataclass(frozen=True)
class Statistics:
    total_predictions: int
    feedback_count: int
    correct_count: int
    mean_confidence: float | None
    per_digit: list[DigitAccuracy]  # by the true digit, 0..9
    confusion: list[list[int]]  # confusion[true][predicted]
    per_day: list[tuple[date, int]]  # local days in the high-score time zone, oldest first
    per_version: list[VersionAccuracy] = field(default_factory=list)  # first answered, first
    reliability: list[ConfidenceBin] = field(default_factory=list)  # CONFIDENCE_BINS bins

    @property
    def accuracy(self) -> float | None:
        return _share(self.correct_count, self.feedback_count)

    @property
    def expected_calibration_error(self) -> float | None:
        """Mean |accuracy - confidence| over the bins, weighted by their feedback counts."""
        if not self.feedback_count:
            return None
        gap = sum(abs(b.correct - b.confidence_sum) for b in self.reliability)
        return gap / self.feedback_count


@dataclass(frozen=True)
class PredictionPage:
    items: list[Prediction]
    next_before: int | None  # pass as `before` for the next (older) page; None on the last


def _prediction(row: Sequence[Any], *, with_image: bool = False) -> Prediction:
    image = bytes(row[13]) if with_image and row[13] is not None else None
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
        is_digit=row[11],
        ood_score=row[12],
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
    if row[0] is None:
        raise DrawingRemoved(prediction_id)
    return bytes(row[0])


def recent_predictions(
    db: Database, *, limit: int = 20, offset: int = 0, with_images: bool = False
) -> list[Prediction]:
    """Newest first, skipping `offset` rows. Images only when asked for: they are the bulk of
    each row. Slow far from the newest rows (PostgreSQL walks every skipped row): page with
    `predictions_page` instead."""
    columns = _COLUMNS + (", image_data" if with_images else "")
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            f"""SELECT {columns} FROM predictions
                ORDER BY created_at DESC, id DESC LIMIT %s OFFSET %s""",
            (limit, offset),
        )
        rows = cur.fetchall()
    return [_prediction(row, with_image=with_images) for row in rows]


def predictions_page(
    db: Database, *, limit: int = 20, before: int | None = None, with_images: bool = False
) -> PredictionPage:
    """The `limit` newest predictions older than the one with id `before` (newest first).

    Keyset pagination on the (created_at, id) index: as fast near the oldest rows as on the
    first page. "Older" is by creation time (a row queued during an outage keeps its time);
    raises PredictionNotFound when `before` names no row.
    """
    columns = _COLUMNS + (", image_data" if with_images else "")
    with db.connection() as conn, conn.cursor() as cur:
        if before is None:
            cur.execute(
                f"""SELECT {columns} FROM predictions
                    ORDER BY created_at DESC, id DESC LIMIT %s""",
                (limit + 1,),
            )
        else:
            cur.execute("SELECT created_at FROM predictions WHERE id = %s", (before,))
            anchor = cur.fetchone()
            if anchor is None:
                raise PredictionNotFound(before)
            cur.execute(
                f"""SELECT {columns} FROM predictions
                    WHERE (created_at, id) < (%s, %s)
                    ORDER BY created_at DESC, id DESC LIMIT %s""",
                (anchor[0], before, limit + 1),
            )
        rows = cur.fetchall()
    items = [_prediction(row, with_image=with_images) for row in rows[:limit]]
    # One row more than asked says whether an older page exists, without counting.
    return PredictionPage(items, items[-1].id if len(rows) > limit else None)


def count_predictions(db: Database) -> int:
    """Stored predictions, from the roll-up (exact; a full count(*) would scan the table)."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT coalesce(sum(n), 0) FROM prediction_totals")
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
    """The most confident prediction since the last local midnight (earliest wins a tie);
    a drawing flagged as not a digit never wins (rows from before the detector still count).

    Read from the daily best that the triggers keep (migration 0005): one key lookup, however
    many predictions the day holds. When the roll-up's days are in another zone than `tz`
    (until `migrate` rebuilds it), today's rows are read instead: an index range, slower.
    """
    start, end = local_day_window(tz, now)
    with db.connection() as conn, conn.cursor() as cur:
        if _rollup_time_zone(cur) == tz.key:
            cur.execute(
                f"""SELECT {_COLUMNS} FROM predictions WHERE id =
                        (SELECT prediction_id FROM prediction_daily_best WHERE day = %s)""",
                (start.date(),),
            )
        else:
            cur.execute(
                f"""SELECT {_COLUMNS} FROM predictions
                    WHERE created_at >= %s AND created_at < %s AND is_digit IS NOT FALSE
                    ORDER BY confidence DESC, created_at ASC, id ASC LIMIT 1""",
                (start, end),
            )
        row = cur.fetchone()
    return _prediction(row) if row else None


def _rollup_time_zone(cur: Any) -> str:
    cur.execute("SELECT time_zone FROM rollup_settings")
    row = cur.fetchone()
    assert row is not None
    return str(row[0])


def rollup_time_zone(db: Database) -> str:
    """The time zone the daily roll-ups' days are in (see `sync_rollup_time_zone`)."""
    with db.connection() as conn, conn.cursor() as cur:
        return _rollup_time_zone(cur)


def statistics(db: Database, tz: ZoneInfo, *, days: int = 30) -> Statistics:
    """Totals, accuracy on feedback, confusion counts, per model version, reliability bins and
    a per-day series, all read from the roll-ups (a few hundred rows, whatever the table size).
    """
    first_day = datetime.now(tz).date() - timedelta(days=days - 1)
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            # Summed exactly as numeric, read as float (a Decimal per row costs more).
            """SELECT model_version, predicted_digit, true_digit, confidence_bin, n,
                      confidence_sum::float8
               FROM prediction_totals WHERE n <> 0"""
        )
        totals = cur.fetchall()
        zone = _rollup_time_zone(cur)
        if zone == tz.key:
            cur.execute(
                """SELECT day, sum(n) FROM prediction_daily WHERE day >= %s
                   GROUP BY day HAVING sum(n) <> 0 ORDER BY day""",
                (first_day,),
            )
        else:
            # The roll-up's days are in another zone until `migrate` rebuilds it: count the
            # window from the table (an index range, slower but right) and say so.
            log.warning(
                "daily roll-up is in %s, statistics asked for %s: run "
                "`python -m digit_predictor.db migrate` to rebuild it",
                zone,
                tz.key,
            )
            cur.execute(
                """SELECT (created_at AT TIME ZONE %s)::date AS day, count(*) FROM predictions
                   WHERE created_at >= %s GROUP BY 1 ORDER BY 1""",
                (tz.key, datetime.combine(first_day, time(0), tzinfo=tz)),
            )
        per_day = [(row[0], int(row[1])) for row in cur.fetchall()]
        versions = sorted({row[0] for row in totals})
        spans: dict[str, tuple[date | None, date | None]] = {}
        for version in versions:
            # Two index probes each on (model_version, day): no scan of the daily roll-up.
            cur.execute(
                """SELECT (SELECT min(day) FROM prediction_daily
                           WHERE model_version = %(v)s AND n <> 0),
                          (SELECT max(day) FROM prediction_daily
                           WHERE model_version = %(v)s AND n <> 0)""",
                {"v": version},
            )
            span = cur.fetchone()
            assert span is not None
            spans[version] = (span[0], span[1])
    return _summarise(totals, per_day, spans)


def _summarise(
    totals: Sequence[Sequence[Any]],
    per_day: list[tuple[date, int]],
    spans: dict[str, tuple[date | None, date | None]],
) -> Statistics:
    confusion = [[0] * 10 for _ in range(10)]
    bins = [[0, 0, 0.0] for _ in range(CONFIDENCE_BINS)]  # answered, correct, confidence sum
    by_version: dict[str, list[int]] = {}  # predictions, answered, correct
    total = 0
    confidence_sum = 0.0
    for version, predicted, true, bin_index, n, conf_sum in totals:
        count = int(n)
        total += count
        confidence_sum += float(conf_sum)
        counts = by_version.setdefault(version, [0, 0, 0])
        counts[0] += count
        if true is None:
            continue
        confusion[true][predicted] += count
        counts[1] += count
        bins[bin_index][0] += count
        bins[bin_index][2] += float(conf_sum)
        if true == predicted:
            counts[2] += count
            bins[bin_index][1] += count
    per_digit = [
        DigitAccuracy(digit=d, feedback_count=sum(confusion[d]), correct=confusion[d][d])
        for d in range(10)
    ]
    feedback = sum(sum(row) for row in confusion)
    per_version = [
        VersionAccuracy(
            model_version=version,
            first_day=spans.get(version, (None, None))[0],
            last_day=spans.get(version, (None, None))[1],
            predictions=counts[0],
            feedback_count=counts[1],
            correct=counts[2],
        )
        for version, counts in by_version.items()
        if counts[0]
    ]
    per_version.sort(key=lambda v: (v.first_day or date.max, v.model_version))
    return Statistics(
        total_predictions=total,
        feedback_count=feedback,
        correct_count=sum(confusion[d][d] for d in range(10)),
        mean_confidence=confidence_sum / total if total else None,
        per_digit=per_digit,
        confusion=confusion,
        per_day=per_day,
        per_version=per_version,
        reliability=[
            ConfidenceBin(index=i, feedback_count=int(b[0]), correct=int(b[1]), confidence_sum=b[2])
            for i, b in enumerate(bins)
        ],
    )
