import uuid
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from digit_predictor.db import Database
from digit_predictor.db.queries import (
    DrawingRemoved,
    NewPrediction,
    PredictionNotFound,
    count_predictions,
    get_image,
    get_prediction,
    high_score_today,
    insert_prediction,
    local_day_window,
    predictions_page,
    recent_predictions,
    record_feedback,
    statistics,
)

NY = ZoneInfo("America/New_York")


def _probs(digit: int, confidence: float) -> list[float]:
    rest = (1 - confidence) / 9
    return [confidence if d == digit else rest for d in range(10)]


def _add(db: Database, digit: int = 7, confidence: float = 0.9, at: datetime | None = None) -> int:
    row = insert_prediction(
        db,
        NewPrediction(
            predicted_digit=digit,
            confidence=confidence,
            probabilities=_probs(digit, confidence),
            image_data=f"png-{digit}-{confidence}".encode(),
            model_version="test-1",
            latency_ms=3.5,
            source="test",
            created_at=at,
        ),
    )
    return row.id


def _ny(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=NY)


def test_insert_returns_the_stored_row(db: Database) -> None:
    before = datetime.now(UTC)
    row = insert_prediction(
        db,
        NewPrediction(
            predicted_digit=4,
            confidence=0.75,
            probabilities=_probs(4, 0.75),
            image_data=b"\x89PNG drawing",
            model_version="cnn-2",
            latency_ms=1.25,
            source="web",
        ),
    )
    assert row.predicted_digit == 4
    assert row.confidence == 0.75
    assert row.probabilities == pytest.approx(_probs(4, 0.75))
    assert row.model_version == "cnn-2"
    assert row.source == "web"
    assert row.latency_ms == 1.25
    assert row.true_digit is None and row.feedback_at is None
    assert row.created_at >= before - timedelta(seconds=1)
    assert get_image(db, row.id) == b"\x89PNG drawing"
    assert get_prediction(db, row.id) == row


def test_the_same_request_id_is_stored_once(db: Database) -> None:
    request_id = uuid.uuid4()
    new = NewPrediction(
        predicted_digit=1,
        confidence=0.5,
        probabilities=_probs(1, 0.5),
        image_data=b"x",
        model_version="m",
        request_id=request_id,
    )
    first = insert_prediction(db, new)
    second = insert_prediction(db, new)
    assert first.id == second.id
    assert count_predictions(db) == 1


def test_feedback_can_be_corrected_and_the_latest_wins(db: Database) -> None:
    prediction_id = _add(db, digit=1)
    first = record_feedback(db, prediction_id, 7)
    assert first.true_digit == 7 and first.feedback_at is not None
    assert first.is_correct is False

    second = record_feedback(db, prediction_id, 1)
    assert second.true_digit == 1
    assert second.is_correct is True
    assert first.feedback_at is not None and second.feedback_at is not None
    assert second.feedback_at > first.feedback_at
    assert get_prediction(db, prediction_id).true_digit == 1


def test_feedback_for_an_unknown_id_is_a_clear_error(db: Database) -> None:
    with pytest.raises(PredictionNotFound, match="no prediction with id 999"):
        record_feedback(db, 999, 3)
    with pytest.raises(PredictionNotFound):
        get_prediction(db, 999)
    with pytest.raises(PredictionNotFound):
        get_image(db, 999)


def test_recent_predictions_are_newest_first_with_paging(db: Database) -> None:
    start = datetime(2026, 5, 1, 12, tzinfo=UTC)
    ids = [_add(db, digit=i, at=start + timedelta(minutes=i)) for i in range(5)]

    page1 = recent_predictions(db, limit=2, offset=0)
    page2 = recent_predictions(db, limit=2, offset=2)
    page3 = recent_predictions(db, limit=2, offset=4)
    assert [p.id for p in page1 + page2 + page3] == ids[::-1]
    assert all(p.image_data is None for p in page1)

    with_images = recent_predictions(db, limit=1, with_images=True)
    assert with_images[0].image_data == b"png-4-0.9"
    assert count_predictions(db) == 5


def test_keyset_pages_walk_every_row_once_newest_first(db: Database) -> None:
    start = datetime(2026, 5, 1, 12, tzinfo=UTC)
    # Three rows share one time (a tie broken by id); one is written late with an old time,
    # as a write queued during an outage is: it pages by its time, not by its id.
    ids = [_add(db, digit=i % 10, at=start + timedelta(minutes=i // 3)) for i in range(10)]
    late = _add(db, digit=0, at=start - timedelta(minutes=1))
    expected = recent_predictions(db, limit=100)
    assert expected[-1].id == late and expected[0].id == ids[-1]

    seen: list[int] = []
    before = None
    for _ in range(10):
        page = predictions_page(db, limit=3, before=before)
        seen += [p.id for p in page.items]
        assert all(p.image_data is None for p in page.items)
        before = page.next_before
        if before is None:
            break
    assert seen == [p.id for p in expected]
    # Exactly a page's worth left: no cursor to an empty page.
    assert predictions_page(db, limit=11).next_before is None
    assert predictions_page(db, limit=10).next_before == expected[9].id
    assert predictions_page(db, limit=1, with_images=True).items[0].image_data == b"png-9-0.9"
    with pytest.raises(PredictionNotFound):
        predictions_page(db, limit=3, before=99_999)


def test_a_dropped_drawing_keeps_the_row(db: Database) -> None:
    pid = _add(db, digit=4)
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE predictions SET image_data = NULL WHERE id = %s", (pid,))
    with pytest.raises(DrawingRemoved, match="retention"):
        get_image(db, pid)
    assert get_prediction(db, pid).predicted_digit == 4
    assert recent_predictions(db, limit=1, with_images=True)[0].image_data is None
    assert count_predictions(db) == 1


def test_day_window_follows_local_midnight_across_daylight_saving() -> None:
    # Compare in UTC: Python subtracts two datetimes of one zone as wall-clock times.
    spring_start, spring_end = local_day_window(NY, _ny(2026, 3, 8, 12))
    assert spring_end.astimezone(UTC) - spring_start.astimezone(UTC) == timedelta(hours=23)
    assert spring_start.astimezone(UTC) == datetime(2026, 3, 8, 5, tzinfo=UTC)

    fall_start, fall_end = local_day_window(NY, _ny(2026, 11, 1, 12))
    assert fall_end.astimezone(UTC) - fall_start.astimezone(UTC) == timedelta(hours=25)
    assert fall_start.astimezone(UTC) == datetime(2026, 11, 1, 4, tzinfo=UTC)


def test_high_score_resets_at_local_midnight(db: Database) -> None:
    yesterday = _add(db, digit=9, confidence=0.99, at=_ny(2026, 6, 14, 23, 50))
    today = _add(db, digit=2, confidence=0.80, at=_ny(2026, 6, 15, 0, 10))
    _add(db, digit=3, confidence=0.60, at=_ny(2026, 6, 15, 0, 20))

    before_midnight = high_score_today(db, NY, now=_ny(2026, 6, 14, 23, 55))
    after_midnight = high_score_today(db, NY, now=_ny(2026, 6, 15, 0, 30))
    assert before_midnight is not None and before_midnight.id == yesterday
    assert after_midnight is not None and after_midnight.id == today
    assert high_score_today(db, NY, now=_ny(2026, 6, 17, 9)) is None


def test_high_score_on_the_23_hour_day(db: Database) -> None:
    # 2026-03-08: clocks jump from 02:00 to 03:00. "The last 24 hours" would reach back into
    # the previous local day at 23:30 EDT; the local-midnight window must not.
    _add(db, digit=8, confidence=0.95, at=_ny(2026, 3, 7, 23, 45))
    in_window = _add(db, digit=5, confidence=0.70, at=_ny(2026, 3, 8, 0, 30))
    best = high_score_today(db, NY, now=_ny(2026, 3, 8, 23, 30))
    assert best is not None and best.id == in_window


def test_high_score_on_the_25_hour_day(db: Database) -> None:
    # 2026-11-01: 01:00-02:00 happens twice. At 23:30 EST, 24 hours back would miss 00:15 EDT.
    _add(db, digit=8, confidence=0.99, at=_ny(2026, 10, 31, 23, 45))
    early = _add(db, digit=6, confidence=0.60, at=_ny(2026, 11, 1, 0, 15))
    best = high_score_today(db, NY, now=_ny(2026, 11, 1, 23, 30))
    assert best is not None and best.id == early


def test_statistics(db: Database) -> None:
    now = datetime.now(NY)
    a = _add(db, digit=1, confidence=0.9, at=now - timedelta(days=1))
    b = _add(db, digit=7, confidence=0.6, at=now)
    c = _add(db, digit=7, confidence=0.8, at=now)
    _add(db, digit=3, confidence=0.7, at=now)
    record_feedback(db, a, 1)  # right
    record_feedback(db, b, 1)  # a 1 read as a 7
    record_feedback(db, c, 7)  # right

    stats = statistics(db, NY)
    assert stats.total_predictions == 4
    assert stats.feedback_count == 3
    assert stats.correct_count == 2
    assert stats.accuracy == pytest.approx(2 / 3)
    assert stats.mean_confidence == pytest.approx((0.9 + 0.6 + 0.8 + 0.7) / 4)
    assert stats.confusion[1][1] == 1 and stats.confusion[1][7] == 1 and stats.confusion[7][7] == 1
    assert sum(map(sum, stats.confusion)) == 3
    assert stats.per_digit[1].feedback_count == 2 and stats.per_digit[1].accuracy == 0.5
    assert stats.per_digit[7].accuracy == 1.0
    assert stats.per_digit[3].accuracy is None
    days = dict(stats.per_day)
    assert days[now.date()] == 3
    assert days[(now - timedelta(days=1)).date()] == 1


def test_statistics_of_an_empty_table(db: Database) -> None:
    stats = statistics(db, NY)
    assert stats.total_predictions == 0
    assert stats.accuracy is None and stats.mean_confidence is None
    assert stats.per_day == []
