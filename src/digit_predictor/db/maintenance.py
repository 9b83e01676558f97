"""Jobs run by `python -m digit_predictor.db`: keep the statistics roll-up in the configured time
zone, check it against a full recount, and drop old drawings nobody corrected.

They run on a connection of their own without the app's statement timeout: a rebuild or a prune
over millions of rows may take minutes, which a page view must never wait for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import psycopg2
import psycopg2.extensions
from tqdm import tqdm

from digit_predictor.db.pool import translate

log = logging.getLogger(__name__)

PRUNE_BATCH = 5_000  # rows per transaction: short locks, and feedback never waits long


@contextmanager
def _connect(dsn: str) -> Iterator[psycopg2.extensions.connection]:
    """A connection of its own (long statements, no pool); the driver's errors come out as the
    data layer's (db.errors), as from `Database.connection`."""
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, application_name="digit-predictor-maint")
    except psycopg2.Error as exc:
        raise translate(exc) from exc
    try:
        yield conn
    except psycopg2.Error as exc:
        raise translate(exc) from exc
    finally:
        conn.close()


@dataclass(frozen=True)
class Rebuild:
    time_zone: str
    predictions: int
    seconds: float


def rebuild_rollup(dsn: str, time_zone: str) -> Rebuild:
    """Recount both roll-ups from `predictions`, with days in `time_zone` (writers wait)."""
    started = time.monotonic()
    with _connect(dsn) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT prediction_rollup_rebuild(%s)", (time_zone,))
        row = cur.fetchone()
    assert row is not None
    done = Rebuild(time_zone, int(row[0]), time.monotonic() - started)
    log.info(
        "statistics roll-up rebuilt: %d predictions, days in %s, %.1f s",
        done.predictions,
        done.time_zone,
        done.seconds,
    )
    return done


def sync_rollup_time_zone(dsn: str, time_zone: str) -> Rebuild | None:
    """Rebuild the roll-up when its days are not in `time_zone` (the HIGH_SCORE_TZ setting).

    Called by `migrate`, which every deployment runs before the app starts; None when the
    roll-up was already in that zone.
    """
    with _connect(dsn) as conn, conn, conn.cursor() as cur:
        cur.execute("SELECT time_zone FROM rollup_settings")
        row = cur.fetchone()
    assert row is not None
    if row[0] == time_zone:
        return None
    log.info("roll-up days are in %s, HIGH_SCORE_TZ says %s: rebuilding", row[0], time_zone)
    return rebuild_rollup(dsn, time_zone)


# Every (day, key) whose roll-up count or confidence sum differs from a recount of the table.
_DIFFERENCES = """
    WITH counted AS (
        SELECT (p.created_at AT TIME ZONE s.time_zone)::date AS day, p.model_version,
               p.predicted_digit, p.true_digit, confidence_bin(p.confidence) AS bin,
               count(*) AS n, sum(p.confidence::numeric) AS confidence_sum
        FROM predictions AS p CROSS JOIN rollup_settings AS s
        GROUP BY 1, 2, 3, 4, 5),
    kept AS (
        SELECT day, model_version, predicted_digit, true_digit, confidence_bin AS bin, n,
               confidence_sum
        FROM prediction_daily WHERE n <> 0 OR confidence_sum <> 0),
    totals AS (
        SELECT NULL::date AS day, model_version, predicted_digit, true_digit,
               confidence_bin AS bin, n, confidence_sum
        FROM prediction_totals WHERE n <> 0 OR confidence_sum <> 0),
    counted_totals AS (
        SELECT NULL::date AS day, model_version, predicted_digit, true_digit, bin,
               sum(n) AS n, sum(confidence_sum) AS confidence_sum
        FROM counted GROUP BY 2, 3, 4, 5)
    (SELECT 'daily' AS rollup, * FROM ((TABLE counted EXCEPT ALL TABLE kept)
                      UNION ALL (TABLE kept EXCEPT ALL TABLE counted)) AS d)
    UNION ALL
    (SELECT 'totals', * FROM ((TABLE counted_totals EXCEPT ALL TABLE totals)
                      UNION ALL (TABLE totals EXCEPT ALL TABLE counted_totals)) AS t)
"""


# Every day whose kept best prediction is not the one a recount picks (migration 0005).
_BEST_DIFFERENCES = """
    WITH counted AS (
        SELECT DISTINCT ON (1) (p.created_at AT TIME ZONE s.time_zone)::date AS day, p.id
        FROM predictions AS p CROSS JOIN rollup_settings AS s
        WHERE p.is_digit IS NOT FALSE
        ORDER BY 1, p.confidence DESC, p.created_at, p.id)
    SELECT 'best', coalesce(c.day, b.day), b.prediction_id AS kept, c.id AS counted
    FROM counted AS c FULL JOIN prediction_daily_best AS b USING (day)
    WHERE b.prediction_id IS DISTINCT FROM c.id
"""


def rollup_differences(dsn: str) -> list[tuple[Any, ...]]:
    """Rows where a roll-up (or the daily best) disagrees with a full recount; empty when
    all are exact.

    Reads one snapshot (repeatable read), so it is right even while the api writes.
    """
    with _connect(dsn) as conn:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn, conn.cursor() as cur:
            cur.execute(_DIFFERENCES)
            differences = list(cur.fetchall())
            cur.execute(_BEST_DIFFERENCES)
            return differences + list(cur.fetchall())


@dataclass(frozen=True)
class Prune:
    older_than_days: int
    cutoff: datetime
    drawings: int
    bytes: int
    seconds: float


def prune_drawings(dsn: str, older_than_days: int, *, progress: bool = True) -> Prune:
    """Set image_data to NULL on uncorrected predictions older than `older_than_days` days.

    The rows, their statistics and every corrected drawing (training data) stay. Walks the
    (created_at, id) index once in batches, so it never rescans what it has already passed.
    """
    if older_than_days < 1:
        raise ValueError("older_than_days must be at least 1")
    started = time.monotonic()
    drawings = freed = 0
    with _connect(dsn) as conn:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT now() - %s", (timedelta(days=older_than_days),))
            row = cur.fetchone()
            assert row is not None
            cutoff: datetime = row[0]
            # Rows to walk, for the progress bar (whole local days: an estimate).
            cur.execute(
                """SELECT coalesce(sum(n), 0) FROM prediction_daily AS d, rollup_settings AS s
                   WHERE d.day < (%s AT TIME ZONE s.time_zone)::date""",
                (cutoff,),
            )
            estimate = cur.fetchone()
        after: tuple[Any, int] | None = None
        bar = tqdm(
            total=int(estimate[0]) if estimate else None,
            unit="row",
            desc="prune drawings",
            disable=not progress,
        )
        with bar:
            while True:
                with conn, conn.cursor() as cur:
                    cur.execute(
                        """SELECT created_at, id FROM predictions
                           WHERE created_at < %s AND (created_at, id) > (%s, %s)
                           ORDER BY created_at, id LIMIT %s""",
                        (cutoff, *(after or (datetime.min, 0)), PRUNE_BATCH),
                    )
                    window = cur.fetchall()
                    if not window:
                        break
                    after = (window[-1][0], window[-1][1])
                    # Locks the rows, so feedback arriving now is either seen here (and the
                    # drawing kept) or waits and lands on the row with its drawing gone.
                    cur.execute(
                        """WITH doomed AS (
                               SELECT id, octet_length(image_data) AS bytes FROM predictions
                               WHERE id = ANY(%s) AND true_digit IS NULL
                                 AND image_data IS NOT NULL
                               FOR UPDATE)
                           UPDATE predictions AS p SET image_data = NULL FROM doomed
                           WHERE p.id = doomed.id RETURNING doomed.bytes""",
                        ([r[1] for r in window],),
                    )
                    done = cur.fetchall()
                drawings += len(done)
                freed += sum(int(r[0]) for r in done)
                bar.update(len(window))
    result = Prune(older_than_days, cutoff, drawings, freed, time.monotonic() - started)
    log.info(
        "dropped %d drawings (%.1f MB) of uncorrected predictions older than %d days "
        "(before %s); rows and statistics kept",
        result.drawings,
        result.bytes / 1e6,
        result.older_than_days,
        result.cutoff.isoformat(timespec="seconds"),
    )
    return result
