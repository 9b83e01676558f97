"""The web app's data functions against a real PostgreSQL (tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from digit_predictor.db import Database
from digit_predictor.db.queries import NewPrediction, get_prediction, insert_prediction
from digit_predictor.web import data
from tests.pg import PostgresServer
from tests.web.drawings import ONE, SEVEN, canvas_png

TZ = ZoneInfo("America/New_York")


def _add(
    db: Database, digit: int, confidence: float, *, at: datetime | None = None, image: bytes = b""
) -> int:
    rest = (1 - confidence) / 9
    row = insert_prediction(
        db,
        NewPrediction(
            predicted_digit=digit,
            confidence=confidence,
            probabilities=[confidence if d == digit else rest for d in range(10)],
            image_data=image or canvas_png(ONE if digit == 1 else SEVEN),
            model_version="test",
            source="web",
            created_at=at,
        ),
    )
    return row.id


def test_feedback_is_stored_and_can_be_changed(db: Database) -> None:
    pid = _add(db, 7, 0.8)
    data.save_feedback(db, pid, 1)
    first = get_prediction(db, pid)
    assert first.true_digit == 1 and first.feedback_at is not None
    data.save_feedback(db, pid, 7)
    second = get_prediction(db, pid)
    assert second.true_digit == 7 and second.feedback_at is not None
    assert second.feedback_at > first.feedback_at


def test_feedback_for_a_missing_prediction_or_digit(db: Database) -> None:
    with pytest.raises(data.PredictionNotFound):
        data.save_feedback(db, 12345, 3)
    pid = _add(db, 7, 0.8)
    with pytest.raises(ValueError):
        data.save_feedback(db, pid, 10)
    assert get_prediction(db, pid).true_digit is None


def test_history_pages_newest_first_with_thumbnails(db: Database) -> None:
    start = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    ids = [_add(db, i % 10, 0.5 + i / 100, at=start + timedelta(minutes=i)) for i in range(25)]
    data.save_feedback(db, ids[-1], 4)  # the newest (a 4) was right
    data.save_feedback(db, ids[-2], 9)  # the one before (a 3) was a 9

    first = data.load_history(db, TZ, page_size=10)
    assert (first.total, first.pages, first.page) == (25, 3, 1)
    assert (first.first_row, first.last_row) == (1, 10)
    frame = first.frame
    assert list(frame.columns) == data.HISTORY_COLUMNS
    assert frame["ID"].tolist() == list(reversed(ids))[:10]
    assert frame.loc[0, "Result"] == "✓ right" and frame.loc[0, "True digit"] == "4"
    assert frame.loc[1, "Result"] == "✗ wrong" and frame.loc[1, "True digit"] == "9"
    assert frame.loc[2, "Result"] == "no answer yet" and frame.loc[2, "True digit"] == ""
    assert frame.loc[0, "Time"] == "2026-11-20 07:24:00"  # 12:24 UTC in New York
    assert all(str(uri).startswith("data:image/png;base64,") for uri in frame["Drawing"])
    assert first.next_before == ids[15]

    # Walking the cursors reaches every row once, the last page with no cursor onwards.
    second = data.load_history(db, TZ, page_size=10, before=first.next_before, page=2)
    assert second.frame["ID"].tolist() == list(reversed(ids))[10:20]
    assert second.next_before is not None
    last = data.load_history(db, TZ, page_size=10, before=second.next_before, page=3)
    assert last.frame["ID"].tolist() == list(reversed(ids))[20:]
    assert (last.first_row, last.last_row, last.next_before) == (21, 25, None)


def test_history_of_a_row_whose_drawing_was_dropped(db: Database) -> None:
    pid = _add(db, 7, 0.8)
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("UPDATE predictions SET image_data = NULL WHERE id = %s", (pid,))
    page = data.load_history(db, TZ, page_size=10)
    assert page.frame["ID"].tolist() == [pid]
    assert page.frame.loc[0, "Drawing"] is None


def test_history_from_a_deleted_cursor_row_says_not_found(db: Database) -> None:
    ids = [_add(db, 1, 0.9) for _ in range(3)]
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("DELETE FROM predictions WHERE id = %s", (ids[1],))
    with pytest.raises(data.PredictionNotFound):
        data.load_history(db, TZ, page_size=10, before=ids[1])


def test_history_of_an_empty_database(db: Database) -> None:
    page = data.load_history(db, TZ, page_size=20)
    assert (page.total, page.pages, page.first_row, len(page.frame)) == (0, 1, 0, 0)
    assert page.next_before is None


def test_high_score_is_todays_best_in_the_time_zone(db: Database) -> None:
    now = datetime(2026, 11, 21, 15, 0, tzinfo=TZ)
    assert data.high_score(db, TZ, now) is None
    _add(db, 2, 0.99, at=now - timedelta(days=1))  # yesterday: not today's
    _add(db, 5, 0.70, at=now - timedelta(hours=2))
    _add(db, 8, 0.95, at=now - timedelta(hours=1))
    best = data.high_score(db, TZ, now)
    assert best is not None
    assert (best.digit, best.confidence) == (8, 0.95)
    assert best.created_at.utcoffset() == timedelta(hours=-5)
    assert f"{best.created_at:%H:%M}" == "14:00"


def test_statistics_count_feedback(db: Database) -> None:
    a, b, c = _add(db, 1, 0.9), _add(db, 7, 0.8), _add(db, 7, 0.6)
    data.save_feedback(db, a, 1)
    data.save_feedback(db, b, 1)
    stats = data.load_statistics(db, TZ)
    assert (stats.total_predictions, stats.feedback_count, stats.correct_count) == (3, 2, 1)
    assert stats.accuracy == 0.5
    assert stats.confusion[1][1] == 1 and stats.confusion[1][7] == 1
    assert sum(n for _, n in stats.per_day) == 3
    assert c  # the third has no feedback and counts only in the totals
    [version] = stats.per_version
    assert (version.model_version, version.predictions, version.feedback_count) == ("test", 3, 2)
    assert version.accuracy == 0.5
    # 0.9 falls in the bin [0.8667, 0.9333), 0.8 in [0.8, 0.8667): one right, one wrong.
    answered = {
        b.index: (b.feedback_count, b.correct) for b in stats.reliability if b.feedback_count
    }
    assert answered == {13: (1, 1), 12: (1, 0)}
    assert stats.expected_calibration_error == pytest.approx((0.1 + 0.8) / 2)


def test_an_unreachable_database_is_unavailable_everywhere(pg_server: PostgresServer) -> None:
    db = Database("postgresql://digits@127.0.0.1:1/none", connect_timeout_s=1)
    calls: list[Callable[[], object]] = [
        lambda: data.load_history(db, TZ, page_size=10),
        lambda: data.load_statistics(db, TZ),
        lambda: data.high_score(db, TZ),
        lambda: data.save_feedback(db, 1, 3),
    ]
    for call in calls:
        with pytest.raises(data.DatabaseUnavailable):
            call()


def test_a_database_without_the_table_is_unavailable(make_database: Callable[[], str]) -> None:
    db = Database(make_database())  # never migrated: the query itself fails
    try:
        with pytest.raises(data.DatabaseUnavailable, match="predictions"):
            data.load_history(db, TZ, page_size=10)
    finally:
        db.close()


def test_history_comes_back_after_a_database_restart(
    db: Database, pg_server: PostgresServer
) -> None:
    _add(db, 1, 0.9)
    assert data.load_history(db, TZ, page_size=10).total == 1
    pg_server.stop()
    try:
        with pytest.raises(data.DatabaseUnavailable):
            data.load_history(db, TZ, page_size=10)
    finally:
        pg_server.start()
    assert data.load_history(db, TZ, page_size=10).total == 1
