import os
import subprocess
import sys
from collections.abc import Callable

import psycopg2

from digit_predictor.db.migrate import available_migrations, migrate


def _schema(url: str) -> list[tuple[str, str, str]]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute(
                """SELECT table_name, column_name, data_type FROM information_schema.columns
                   WHERE table_schema = 'public' ORDER BY 1, 2"""
            )
            return cur.fetchall()
    finally:
        conn.close()


def _applied(url: str) -> list[str]:
    conn = psycopg2.connect(url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def test_migrate_twice_changes_nothing(make_database: Callable[[], str]) -> None:
    url = make_database()
    versions = [m.version for m in available_migrations()]

    assert migrate(url) == versions
    schema = _schema(url)
    assert ("predictions", "image_data", "bytea") in schema

    assert migrate(url) == []
    assert _schema(url) == schema
    assert _applied(url) == versions


def test_two_concurrent_migrations_both_succeed(make_database: Callable[[], str]) -> None:
    url = make_database()
    env = {**os.environ, "DATABASE_URL": url, "DEBUG": "true"}
    command = [sys.executable, "-m", "digit_predictor.db", "migrate"]
    procs = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    outputs = [proc.communicate(timeout=60) for proc in procs]

    assert [proc.returncode for proc in procs] == [0, 0], outputs
    # The lock is taken per migration, so the two runners may share the work between them:
    # each migration is applied by exactly one of them, and all of them by the two together.
    applied: list[str] = []
    for out, _ in outputs:
        first = out.decode().strip().splitlines()[0]
        if first != "schema is up to date":
            assert first.startswith("migrations applied: "), first
            applied += first.removeprefix("migrations applied: ").split(", ")
    versions = [m.version for m in available_migrations()]
    assert sorted(applied) == versions
    assert _applied(url) == versions
    # Both registered the shipped model; it is the one champion.
    shipped = [out.decode().strip().splitlines()[-1] for out, _ in outputs]
    assert all(line.startswith("shipped model ") for line in shipped), shipped
    assert all(line.endswith(": champion") for line in shipped), shipped


def test_migrate_reports_unreachable_database() -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none", "DEBUG": "true"}
    proc = subprocess.run(
        [sys.executable, "-m", "digit_predictor.db", "migrate"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    assert "database not reachable" in proc.stderr
