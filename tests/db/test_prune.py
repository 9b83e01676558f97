"""Dropping old drawings (DRAWING_RETENTION_DAYS): the command and the backup job that runs it."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from digit_predictor.db import Database
from digit_predictor.db.maintenance import prune_drawings, rollup_differences
from digit_predictor.db.queries import (
    NewPrediction,
    count_predictions,
    insert_prediction,
    record_feedback,
    statistics,
)
from digit_predictor.testing.api_server import app_free_environ
from tests.db.test_rollup import NY

ROOT = Path(__file__).resolve().parents[2]
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def _add(db: Database, age_days: float, *, true_digit: int | None = None) -> int:
    row = insert_prediction(
        db,
        NewPrediction(
            predicted_digit=7,
            confidence=0.9,
            probabilities=[0.9 if d == 7 else 0.1 / 9 for d in range(10)],
            image_data=b"\x89PNG" + bytes(300),
            model_version="v1",
            created_at=datetime.now(UTC) - timedelta(days=age_days),
        ),
    )
    if true_digit is not None:
        record_feedback(db, row.id, true_digit)
    return int(row.id)


def _drawings(url: str) -> dict[int, bool]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT id, image_data IS NOT NULL FROM predictions ORDER BY id")
            return dict(cur.fetchall())
    finally:
        conn.close()


def _env(url: str, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in app_free_environ().items() if not k.startswith("PG")}
    if PG_BIN:
        env["PATH"] = f"{PG_BIN[-1]}:{env['PATH']}"
    return {**env, "DATABASE_URL": url, "PYTHON": sys.executable, **settings}


def test_prune_drops_only_old_uncorrected_drawings(database_url: str, db: Database) -> None:
    old = [_add(db, 40 + i) for i in range(7)]
    old_corrected = _add(db, 50, true_digit=1)
    recent = _add(db, 2)
    before = statistics(db, NY)

    done = prune_drawings(database_url, 30, progress=False)
    assert (done.drawings, done.bytes) == (7, 7 * 304)
    kept = _drawings(database_url)
    assert [pid for pid, has in kept.items() if not has] == old
    assert kept[old_corrected] and kept[recent]
    # Rows and statistics stay exactly as they were.
    assert count_predictions(db) == 9
    after = statistics(db, NY)
    assert (after.total_predictions, after.confusion) == (
        before.total_predictions,
        before.confusion,
    )
    assert rollup_differences(database_url) == []
    # Nothing left to do the second time; a late correction of a pruned row still counts.
    assert prune_drawings(database_url, 30, progress=False).drawings == 0
    record_feedback(db, old[0], 7)
    assert statistics(db, NY).correct_count == 1


def test_prune_refuses_a_meaningless_age(database_url: str) -> None:
    with pytest.raises(ValueError):
        prune_drawings(database_url, 0)


def _run(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, env=env, cwd=cwd, capture_output=True, text=True, timeout=120, check=False
    )


def test_the_command_is_off_by_default_and_says_so(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    pid = _add(db, 400)
    command = [sys.executable, "-m", "digit_predictor.db", "prune-drawings"]
    off = _run(command, _env(database_url), tmp_path)
    assert off.returncode == 0, off.stderr
    assert "drawing retention is off" in off.stdout
    assert _drawings(database_url)[pid]

    on = _run(command, _env(database_url, DRAWING_RETENTION_DAYS="365"), tmp_path)
    assert on.returncode == 0, on.stderr
    assert "dropped 1 drawings" in on.stdout and "older than 365 days" in on.stdout
    assert not _drawings(database_url)[pid]

    bad = _run([*command, "--older-than-days", "0"], _env(database_url), tmp_path)
    assert bad.returncode == 2 and "at least 1" in bad.stderr


def test_the_backup_job_prunes_after_the_dump(
    database_url: str, db: Database, tmp_path: Path
) -> None:
    pid = _add(db, 100)
    backups = tmp_path / "backups"
    result: Any = _run(
        [str(ROOT / "scripts" / "backup_db.sh"), str(backups)],
        _env(database_url, DRAWING_RETENTION_DAYS="90"),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "backup: " in result.stdout
    assert "dropped 1 drawings" in result.stdout
    assert not _drawings(database_url)[pid]
    # The dump was taken first: it still holds the drawing.
    [dump] = backups.glob("digits-*.dump")
    listing = _run(
        ["pg_restore", "--data-only", "--table=predictions", "-f", "-", str(dump)],
        _env(database_url),
        tmp_path,
    )
    assert listing.returncode == 0, listing.stderr
    assert "\\\\x89504e47" in listing.stdout
