"""The statistics roll-up (migration 0003) against a real PostgreSQL: every kind of write keeps
it equal to a full recount, concurrent writers never lose a count, and the statistics read from
it equal statistics computed from the rows themselves."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import psycopg2
import pytest

from digit_predictor.db import Database
from digit_predictor.db.maintenance import (
    rebuild_rollup,
    rollup_differences,
    sync_rollup_time_zone,
)
from digit_predictor.db.migrate import MIGRATIONS_DIR, migrate
from digit_predictor.db.queries import (
    CONFIDENCE_BINS,
    NewPrediction,
    Statistics,
    count_predictions,
    high_score_today,
    insert_prediction,
    record_feedback,
    rollup_time_zone,
    statistics,
)

NY = ZoneInfo("America/New_York")
KOLKATA = ZoneInfo("Asia/Kolkata")  # +05:30: a zone that hourly UTC buckets would get wrong

INSERT_SQL = """INSERT INTO predictions (predicted_digit, confidence, probabilities, image_data,
                                         model_version, created_at)
                VALUES (%s, %s, %s, %s, %s, %s) RETURNING id"""


def _probs(digit: int, confidence: float) -> list[float]:
    rest = (1 - confidence) / 9
    return [confidence if d == digit else rest for d in range(10)]


def _add(
    db: Database,
    digit: int = 7,
    confidence: float = 0.9,
    *,
    at: datetime | None = None,
    version: str = "v1",
) -> int:
    row = insert_prediction(
        db,
        NewPrediction(
            predicted_digit=digit,
            confidence=confidence,
            probabilities=_probs(digit, confidence),
            image_data=b"png",
            model_version=version,
            created_at=at,
        ),
    )
    return int(row.id)


def _execute(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


def _recount(url: str, tz: ZoneInfo, days: int = 30) -> Statistics:
    """Statistics computed in Python from every row: what the roll-up must reproduce."""
    rows = _execute(
        url,
        "SELECT predicted_digit, true_digit, confidence, model_version, created_at "
        "FROM predictions",
    )
    confusion = [[0] * 10 for _ in range(10)]
    per_day: dict[date, int] = {}
    first_day = datetime.now(tz).date() - timedelta(days=days - 1)
    for predicted, true, _, _, created_at in rows:
        if true is not None:
            confusion[true][predicted] += 1
        day = created_at.astimezone(tz).date()
        if day >= first_day:
            per_day[day] = per_day.get(day, 0) + 1
    feedback = [r for r in rows if r[1] is not None]
    return Statistics(
        total_predictions=len(rows),
        feedback_count=len(feedback),
        correct_count=sum(1 for r in feedback if r[0] == r[1]),
        mean_confidence=sum(r[2] for r in rows) / len(rows) if rows else None,
        per_digit=[],
        confusion=confusion,
        per_day=sorted(per_day.items()),
    )


def _assert_exact(url: str, db: Database, tz: ZoneInfo = NY) -> None:
    assert rollup_differences(url) == []
    got, want = statistics(db, tz), _recount(url, tz)
    assert (got.total_predictions, got.feedback_count, got.correct_count) == (
        want.total_predictions,
        want.feedback_count,
        want.correct_count,
    )
    assert got.confusion == want.confusion
    assert got.per_day == want.per_day
    if want.mean_confidence is None:
        assert got.mean_confidence is None
    else:
        assert got.mean_confidence == pytest.approx(want.mean_confidence, rel=1e-12)


def test_every_kind_of_write_keeps_the_rollup_exact(database_url: str, db: Database) -> None:
    now = datetime.now(UTC)
    ids = [_add(db, d % 10, 0.5 + d / 40, at=now - timedelta(hours=7 * d)) for d in range(20)]
    _assert_exact(database_url, db)

    record_feedback(db, ids[0], 0)  # right
    record_feedback(db, ids[1], 4)  # wrong
    record_feedback(db, ids[1], 1)  # changed its mind: now right
    _assert_exact(database_url, db)

    # A retried write of the same request_id stays one row and one count.
    new = NewPrediction(
        predicted_digit=3,
        confidence=0.77,
        probabilities=_probs(3, 0.77),
        image_data=b"png",
        model_version="v1",
        request_id=uuid.uuid4(),
    )
    insert_prediction(db, new)
    insert_prediction(db, new)
    assert count_predictions(db) == 21
    _assert_exact(database_url, db)

    # Manual fixes: a multi-row update of counted columns, a feedback removed, deletes.
    _execute(database_url, "UPDATE predictions SET model_version = 'v0' WHERE id <= %s", (ids[5],))
    _execute(
        database_url,
        "UPDATE predictions SET true_digit = NULL, feedback_at = NULL WHERE id = %s",
        (ids[0],),
    )
    _execute(
        database_url,
        "UPDATE predictions SET confidence = 1.0, created_at = created_at - interval '3 days' "
        "WHERE id = %s",
        (ids[2],),
    )
    _execute(database_url, "DELETE FROM predictions WHERE id = ANY(%s)", ([ids[3], ids[4]],))
    # A bulk insert in one statement, and an update that touches nothing counted.
    _execute(
        database_url,
        """INSERT INTO predictions (predicted_digit, confidence, probabilities, image_data,
                                    model_version, true_digit, feedback_at)
           SELECT i % 10, 0.99, array_fill(0.1::float8, ARRAY[10]), '\\x01', 'v2', i % 7, now()
           FROM generate_series(1, 300) AS i""",
    )
    _execute(database_url, "UPDATE predictions SET image_data = NULL WHERE id % 2 = 0")
    _assert_exact(database_url, db)
    assert count_predictions(db) == 319

    # The statement the `database_url` fixture runs between tests: it empties the roll-ups too.
    _execute(database_url, "TRUNCATE predictions, models RESTART IDENTITY")
    assert count_predictions(db) == 0
    assert statistics(db, NY).per_version == []
    assert _execute(
        database_url,
        "SELECT (SELECT count(*) FROM prediction_totals), (SELECT count(*) FROM prediction_daily)",
    ) == [(0, 0)]
    _assert_exact(database_url, db)


def test_statistics_per_version_and_reliability(database_url: str, db: Database) -> None:
    today = datetime.now(NY)
    for i in range(10):
        pid = _add(db, 1, 0.95, at=today - timedelta(days=3), version="old")
        record_feedback(db, pid, 1 if i < 6 else 7)  # 60% right
    for i in range(10):
        pid = _add(db, 1, 0.95, at=today, version="new")
        record_feedback(db, pid, 1 if i < 9 else 7)  # 90% right
    _add(db, 2, 1.0, version="new")  # no feedback: counted, but not in accuracy
    stats = statistics(db, NY)
    assert [
        (v.model_version, v.predictions, v.feedback_count, v.correct) for v in stats.per_version
    ] == [
        ("old", 10, 10, 6),
        ("new", 11, 10, 9),
    ]
    assert stats.per_version[0].first_day == (today - timedelta(days=3)).date()
    assert stats.per_version[1].last_day == today.date()
    assert len(stats.reliability) == CONFIDENCE_BINS
    [bin_] = [b for b in stats.reliability if b.feedback_count]
    assert (bin_.index, bin_.feedback_count, bin_.correct) == (14, 20, 15)
    assert bin_.mean_confidence == pytest.approx(0.95)
    assert stats.expected_calibration_error == pytest.approx(0.95 - 0.75)


def test_concurrent_writers_and_feedback_never_lose_a_count(
    database_url: str, db: Database
) -> None:
    """Two writers (single rows and 5-row statements) and a feedback writer, all at once."""
    errors: list[BaseException] = []
    stop = threading.Event()
    written: list[int] = []
    lock = threading.Lock()
    now = datetime.now(UTC)

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        conn = psycopg2.connect(database_url)
        conn.autocommit = True
        try:
            for i in range(250):
                with conn.cursor() as cur:
                    # Recent times only, so most writes land on the same few roll-up rows.
                    at = now - timedelta(minutes=rnd.randrange(3))
                    digit = rnd.randrange(10)
                    if i % 5 == 0:
                        cur.execute(
                            """INSERT INTO predictions (predicted_digit, confidence, probabilities,
                                   image_data, model_version, created_at)
                               SELECT %s, 0.99, %s, '\\x01', 'v1', %s
                               FROM generate_series(1, 5) RETURNING id""",
                            (digit, _probs(digit, 0.99), at),
                        )
                    else:
                        cur.execute(INSERT_SQL, (digit, 0.99, _probs(digit, 0.99), b"x", "v1", at))
                    with lock:
                        written.extend(row[0] for row in cur.fetchall())
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    def feedback(seed: int) -> None:
        rnd = random.Random(seed)
        conn = psycopg2.connect(database_url)
        conn.autocommit = True
        try:
            while not stop.is_set():
                with lock:
                    ids = rnd.sample(written, min(3, len(written)))
                for pid in ids:
                    with conn.cursor() as cur:
                        cur.execute(
                            "UPDATE predictions SET true_digit = %s, feedback_at = now() "
                            "WHERE id = %s",
                            (rnd.randrange(10), pid),
                        )
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    writers = [threading.Thread(target=writer, args=(seed,)) for seed in (1, 2)]
    answers = [threading.Thread(target=feedback, args=(seed,)) for seed in (3, 4)]
    for thread in writers + answers:
        thread.start()
    for thread in writers:
        thread.join(timeout=120)
    stop.set()
    for thread in answers:
        thread.join(timeout=30)
    assert errors == []
    assert count_predictions(db) == len(written) == 2 * (200 + 50 * 5)
    _assert_exact(database_url, db)


def test_the_migration_builds_the_rollup_from_existing_rows(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    url = make_database()
    before_rollup = tmp_path / "migrations"
    before_rollup.mkdir()
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        if path.name < "0003":
            shutil.copy(path, before_rollup / path.name)
    migrate(url, before_rollup)
    now = datetime.now(UTC)
    for i in range(40):
        _execute(
            url,
            INSERT_SQL,
            (i % 10, 0.6, _probs(i % 10, 0.6), b"x", "v1", now - timedelta(hours=i)),
        )
    _execute(url, "UPDATE predictions SET true_digit = 3, feedback_at = now() WHERE id % 4 = 0")

    assert "0003" in migrate(url)
    db = Database(url)
    try:
        assert count_predictions(db) == 40
        _assert_exact(url, db)
        assert statistics(db, NY).feedback_count == 10
    finally:
        db.close()


def test_a_new_time_zone_setting_rebuilds_the_daily_rollup(database_url: str, db: Database) -> None:
    # 20:00 UTC is the same day in New York and the next day in Kolkata.
    yesterday = datetime.now(UTC).date() - timedelta(days=1)
    at = datetime.combine(yesterday, datetime.min.time(), tzinfo=UTC) + timedelta(hours=20)
    _add(db, 5, 0.9, at=at)
    ny_days = statistics(db, NY).per_day
    assert ny_days == [(at.astimezone(NY).date(), 1)]

    # Asked in another zone before any rebuild: still right (counted from the table).
    kolkata_day = at.astimezone(KOLKATA).date()
    assert statistics(db, KOLKATA).per_day == [(kolkata_day, 1)]
    assert kolkata_day != ny_days[0][0]

    rebuilt = sync_rollup_time_zone(database_url, KOLKATA.key)
    assert rebuilt is not None and rebuilt.predictions == 1
    assert rollup_time_zone(db) == KOLKATA.key
    assert sync_rollup_time_zone(database_url, KOLKATA.key) is None  # already there
    assert statistics(db, KOLKATA).per_day == [(kolkata_day, 1)]
    _add(db, 6, 0.8, at=at)
    _assert_exact(database_url, db, KOLKATA)
    rebuild_rollup(database_url, NY.key)  # as the session's other tests expect
    _assert_exact(database_url, db, NY)


def test_migrate_command_syncs_the_time_zone(
    database_url: str, db: Database, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from digit_predictor.config import get_settings
    from digit_predictor.db.__main__ import main

    _add(db, 1, 0.9)
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("HIGH_SCORE_TZ", "Asia/Kathmandu")
    # No shipped model to register: a new champion here would swap the session's api servers.
    monkeypatch.setenv("MODEL_PATH", str(tmp_path / "no-model.pt"))
    get_settings.cache_clear()
    try:
        assert main(["migrate"]) == 0
        assert rollup_time_zone(db) == "Asia/Kathmandu"
        assert main(["check-rollup"]) == 0
        # A roll-up that went wrong (here by hand) is found, then fixed by a rebuild.
        _execute(database_url, "UPDATE prediction_totals SET n = n + 1")
        assert main(["check-rollup"]) == 1
        assert main(["rebuild-rollup"]) == 0
        assert main(["check-rollup"]) == 0
    finally:
        get_settings.cache_clear()
        rebuild_rollup(database_url, NY.key)


def test_columns_added_later_change_nothing(make_database: Callable[[], str]) -> None:
    """Migration 0004's columns (is_digit, ood_score) and any later one leave the triggers be."""
    url = make_database()
    migrate(url)
    _execute(url, "ALTER TABLE predictions ADD COLUMN later_note text")
    now = datetime.now(UTC)
    for i in range(10):
        _execute(url, INSERT_SQL, (i, 0.8, _probs(i, 0.8), b"x", "v1", now))
    _execute(
        url,
        "UPDATE predictions SET is_digit = id % 2 = 0, ood_score = id / 10.0, later_note = 'x'",
    )
    _execute(url, "UPDATE predictions SET true_digit = 4, feedback_at = now() WHERE is_digit")
    assert rollup_differences(url) == []
    [(n,)] = _execute(url, "SELECT sum(n) FROM prediction_totals WHERE true_digit = 4")
    assert n == 5


def test_a_backup_restored_keeps_the_rollup_and_its_triggers(
    make_database: Callable[[], str], tmp_path: Path
) -> None:
    url = make_database()
    migrate(url)
    now = datetime.now(UTC)
    for i in range(6):
        _execute(url, INSERT_SQL, (i, 0.9, _probs(i, 0.9), b"x", "v1", now))
    pg_bin = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.pop("DRAWING_RETENTION_DAYS", None)
    env.update(DATABASE_URL=url, PATH=f"{pg_bin[-1]}:{env['PATH']}" if pg_bin else env["PATH"])
    scripts = Path(__file__).resolve().parents[2] / "scripts"

    def run(*args: str) -> None:
        done = subprocess.run(
            args, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr

    run(str(scripts / "backup_db.sh"), str(tmp_path))
    _execute(url, "DELETE FROM predictions WHERE predicted_digit < 3")
    _execute(url, "UPDATE predictions SET true_digit = 1, feedback_at = now()")
    [dump] = tmp_path.glob("digits-*.dump")
    run(str(scripts / "restore_db.sh"), "--yes", str(dump))
    assert rollup_differences(url) == []
    [(n,)] = _execute(url, "SELECT sum(n) FROM prediction_totals")
    assert n == 6
    # The triggers came back with the restore: new writes are still counted.
    _execute(url, INSERT_SQL, (7, 0.9, _probs(7, 0.9), b"x", "v1", now))
    _execute(url, "UPDATE predictions SET true_digit = 7, feedback_at = now() WHERE id = 1")
    assert rollup_differences(url) == []
    [(n, answered)] = _execute(
        url, "SELECT sum(n), sum(n) FILTER (WHERE true_digit IS NOT NULL) FROM prediction_totals"
    )
    assert (n, answered) == (7, 1)


def _best_by_recount(url: str, tz: ZoneInfo, day: date) -> int | None:
    """Today's high score by the rule, in Python over every row: what the daily best must hold."""
    rows = _execute(url, "SELECT id, confidence, created_at, is_digit FROM predictions")
    candidates = [
        (-conf, at, pid)
        for pid, conf, at, is_digit in rows
        if is_digit is not False and at.astimezone(tz).date() == day
    ]
    return min(candidates)[2] if candidates else None


def _high_score_id(db: Database, tz: ZoneInfo, now: datetime) -> int | None:
    best = high_score_today(db, tz, now)
    return None if best is None else int(best.id)


def test_the_daily_best_follows_every_kind_of_write(database_url: str, db: Database) -> None:
    """Migration 0005: today's high score comes from a kept row; deletes, manual fixes, the
    detector's verdict and day changes all move it exactly where a recount would."""
    now = datetime.now(NY)
    today = now.date()
    morning = datetime.combine(today, datetime.min.time(), tzinfo=NY) + timedelta(minutes=5)
    ids = [_add(db, d, 0.5 + d / 20, at=morning + timedelta(minutes=d)) for d in range(10)]
    tie = _add(db, 1, 0.95, at=morning + timedelta(minutes=30))  # same confidence, later

    def check() -> None:
        assert rollup_differences(database_url) == []
        assert _high_score_id(db, NY, now) == _best_by_recount(database_url, NY, today)

    check()
    assert _high_score_id(db, NY, now) == ids[9]  # 0.95, earlier than the tie
    _execute(database_url, "DELETE FROM predictions WHERE id = %s", (ids[9],))
    check()
    assert _high_score_id(db, NY, now) == tie
    # The detector says the best is not a digit: the next one wins; and back again.
    _execute(database_url, "UPDATE predictions SET is_digit = false WHERE id = %s", (tie,))
    check()
    assert _high_score_id(db, NY, now) == ids[8]
    _execute(database_url, "UPDATE predictions SET is_digit = true WHERE id = %s", (tie,))
    check()
    assert _high_score_id(db, NY, now) == tie
    # A manual fix lowers the best's confidence, another moves a row to yesterday.
    _execute(database_url, "UPDATE predictions SET confidence = 0.1 WHERE id = %s", (tie,))
    check()
    _execute(
        database_url,
        "UPDATE predictions SET created_at = created_at - interval '1 day' WHERE id = %s",
        (ids[8],),
    )
    check()
    assert _high_score_id(db, NY, now) == ids[7]
    assert _high_score_id(db, NY, now - timedelta(days=1)) == ids[8]
    # A non-digit never wins, even the most confident; feedback changes nothing.
    _execute(database_url, INSERT_SQL, (3, 0.999, _probs(3, 0.999), b"x", "v1", morning))
    _execute(database_url, "UPDATE predictions SET is_digit = false WHERE confidence = 0.999")
    record_feedback(db, ids[7], 2)
    check()
    assert _high_score_id(db, NY, now) == ids[7]
    # Every row of the day gone: no high score, no kept row.
    _execute(database_url, "DELETE FROM predictions WHERE created_at >= %s", (morning,))
    check()
    assert _high_score_id(db, NY, now) is None
    # Asked in a zone the roll-up is not in: counted from the table, same rule.
    kolkata_now = datetime.now(KOLKATA)
    _add(db, 4, 0.9, at=kolkata_now)
    assert _high_score_id(db, KOLKATA, kolkata_now) == _best_by_recount(
        database_url, KOLKATA, kolkata_now.date()
    )


_TODAYS_BEST = "(SELECT prediction_id FROM prediction_daily_best ORDER BY day DESC LIMIT 1)"
DELETE_BEST = f"DELETE FROM predictions WHERE id = {_TODAYS_BEST}"  # noqa: S608 (constants)
FLAG_BEST = f"UPDATE predictions SET is_digit = false WHERE id = {_TODAYS_BEST}"  # noqa: S608


def test_the_daily_best_under_concurrent_writers_and_deletes(
    database_url: str, db: Database
) -> None:
    """Two writers offering random confidences, while a third deletes today's best or flags it
    as not a digit, over and over: the kept best always ends where a recount puts it."""
    errors: list[BaseException] = []
    stop = threading.Event()
    now = datetime.now(UTC)

    def writer(seed: int) -> None:
        rnd = random.Random(seed)
        conn = psycopg2.connect(database_url)
        conn.autocommit = True
        try:
            for _ in range(200):
                conf = rnd.choice([0.5, 0.9, 0.99, rnd.random()])
                with conn.cursor() as cur:
                    cur.execute(INSERT_SQL, (1, conf, _probs(1, conf), b"x", "v1", now))
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    def fixer() -> None:
        conn = psycopg2.connect(database_url)
        conn.autocommit = True
        try:
            i = 0
            while not stop.is_set():
                i += 1
                with conn.cursor() as cur:
                    cur.execute(DELETE_BEST if i % 2 else FLAG_BEST)
        except BaseException as exc:
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in (5, 6)]
    fixing = threading.Thread(target=fixer)
    for thread in [*threads, fixing]:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    stop.set()
    fixing.join(timeout=30)
    assert errors == []
    assert rollup_differences(database_url) == []
    day = now.astimezone(NY).date()
    assert _high_score_id(db, NY, now) == _best_by_recount(database_url, NY, day)
