"""scripts/backup_db.sh and scripts/restore_db.sh against a real PostgreSQL (conftest's server)."""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from digit_predictor.db.migrate import migrate

from .files import ROOT

BACKUP = ROOT / "scripts" / "backup_db.sh"
RESTORE = ROOT / "scripts" / "restore_db.sh"
PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def run(
    script: Path, *args: str, database_url: str | None, **env: str
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PG") and k != "DATABASE_URL"}
    if PG_BIN:  # the newest server's client tools first, as scripts/pg_cluster.sh does
        clean["PATH"] = f"{PG_BIN[-1]}:{clean['PATH']}"
    if database_url:
        clean["DATABASE_URL"] = database_url
    return subprocess.run(
        [str(script), *args],
        env={**clean, **env},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def execute(url: str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def add_prediction(
    url: str, digit: int, *, true_digit: int | None = None, image: bytes | None = None
) -> int:
    probabilities = [0.01] * 10
    probabilities[digit] = 0.91
    rows = execute(
        url,
        """INSERT INTO predictions (predicted_digit, confidence, probabilities, image_data,
                                    model_version, true_digit, feedback_at)
           VALUES (%s, 0.91, %s, %s, 'test-model', %s,
                   CASE WHEN %s IS NULL THEN NULL ELSE now() END)
           RETURNING id""",
        (
            digit,
            probabilities,
            psycopg2.Binary(image or bytes([digit]) * 64),
            true_digit,
            true_digit,
        ),
    )
    return int(rows[0][0])


def snapshot(url: str) -> list[tuple[Any, ...]]:
    rows = execute(
        url,
        """SELECT id, request_id, created_at, predicted_digit, confidence, probabilities,
                  true_digit, feedback_at, md5(image_data), model_version
           FROM predictions ORDER BY id""",
    )
    return rows + execute(url, "SELECT version, name FROM schema_migrations ORDER BY version")


@pytest.fixture
def populated(make_database: Callable[[], str]) -> str:
    url = make_database()
    migrate(url)
    for digit in (3, 7, 1):
        add_prediction(url, digit, true_digit=digit if digit != 1 else None)
    return url


def dumps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("digits-"))


def test_backup_and_restore_round_trip(populated: str, tmp_path: Path) -> None:
    before = snapshot(populated)
    [(last_id,)] = execute(populated, "SELECT max(id) FROM predictions")
    result = run(BACKUP, str(tmp_path), database_url=populated)
    assert result.returncode == 0, result.stderr
    [dump] = dumps(tmp_path)
    assert dump.endswith(".dump") and f"backup: {tmp_path / dump}" in result.stdout
    assert stat.S_IMODE((tmp_path / dump).stat().st_mode) == 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".partial")]

    # Everything changes after the backup...
    execute(populated, "DELETE FROM predictions WHERE predicted_digit = 3")
    execute(populated, "UPDATE predictions SET true_digit = 2, feedback_at = now()")
    add_prediction(populated, 9)
    assert snapshot(populated) != before

    # ...and the restore puts it back exactly.
    result = run(RESTORE, "--yes", str(tmp_path / dump), database_url=populated)
    assert result.returncode == 0, result.stderr
    assert snapshot(populated) == before
    # The identity sequence came back too: a new row does not reuse an id.
    assert add_prediction(populated, 4) > last_id


def test_restore_into_an_empty_database(
    populated: str, make_database: Callable[[], str], tmp_path: Path
) -> None:
    assert run(BACKUP, str(tmp_path), database_url=populated).returncode == 0
    [dump] = dumps(tmp_path)
    fresh = make_database()
    result = run(RESTORE, str(tmp_path / dump), database_url=fresh, RESTORE_CONFIRM="yes")
    assert result.returncode == 0, result.stderr
    assert snapshot(fresh) == snapshot(populated)
    assert migrate(fresh) == []  # schema_migrations came along: nothing to re-apply


def test_retention_keeps_the_newest_dumps(populated: str, tmp_path: Path) -> None:
    old = ["digits-20250101T030000Z.dump", "digits-20250102T030000Z.dump"]
    old += ["digits-20250103T030000Z.dump"]
    for name in old:
        (tmp_path / name).write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("not a backup")
    result = run(BACKUP, str(tmp_path), database_url=populated, BACKUP_KEEP="2")
    assert result.returncode == 0, result.stderr
    remaining = dumps(tmp_path)
    assert len(remaining) == 2
    assert remaining[0] == "digits-20250103T030000Z.dump"  # the newest old one
    assert remaining[1] > remaining[0]  # and the new one
    assert (tmp_path / "notes.txt").exists()
    assert "removed old backup" in result.stdout


def test_failed_backup_leaves_no_file_and_deletes_nothing(populated: str, tmp_path: Path) -> None:
    (tmp_path / "digits-20250101T030000Z.dump").write_bytes(b"old")
    missing = populated.rsplit("/", 1)[0] + "/no_such_database"
    result = run(BACKUP, str(tmp_path), database_url=missing, BACKUP_KEEP="1")
    assert result.returncode != 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits-20250101T030000Z.dump"]


def test_restore_refuses_without_confirmation(populated: str, tmp_path: Path) -> None:
    assert run(BACKUP, str(tmp_path), database_url=populated).returncode == 0
    [dump] = dumps(tmp_path)
    add_prediction(populated, 5)
    before = snapshot(populated)
    result = run(RESTORE, str(tmp_path / dump), database_url=populated)
    assert result.returncode != 0 and "--yes" in result.stderr
    assert snapshot(populated) == before


def test_damaged_dump_changes_nothing(populated: str, tmp_path: Path) -> None:
    # A large incompressible drawing puts most of the dump in the table data, after the table of
    # contents: cutting the end leaves a file that lists fine but fails half-way through.
    add_prediction(populated, 8, image=os.urandom(200_000))
    assert run(BACKUP, str(tmp_path), database_url=populated).returncode == 0
    [dump] = dumps(tmp_path)
    data = (tmp_path / dump).read_bytes()
    damaged = tmp_path / "damaged.dump"
    damaged.write_bytes(data[:-5_000])
    add_prediction(populated, 6)
    before = snapshot(populated)
    result = run(RESTORE, "--yes", str(damaged), database_url=populated)
    assert result.returncode != 0
    assert "not a readable" not in result.stderr, "the damage must be past the table of contents"
    assert snapshot(populated) == before  # one transaction: all or nothing


def test_not_a_dump_is_refused(populated: str, tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.dump"
    bogus.write_text("SELECT 1;\n")
    result = run(RESTORE, "--yes", str(bogus), database_url=populated)
    assert result.returncode != 0 and "not a readable pg_dump archive" in result.stderr


def test_restore_needs_a_target_database(tmp_path: Path) -> None:
    dump = tmp_path / "x.dump"
    dump.write_bytes(b"x")
    result = run(RESTORE, "--yes", str(dump), database_url=None)
    assert result.returncode == 2 and "DATABASE_URL" in result.stderr
