"""Versioned SQL migrations: `NNNN_name.sql` files applied in order, each once.

An advisory lock serialises concurrent runners (the api and a one-shot job starting together):
the second waits, then finds nothing left to do. The lock is transaction-scoped, taken again by
each step, so it never outlives its transaction: behind a pooler in transaction mode (PgBouncer,
deploy/k8s) each transaction may run on another server session, and a session lock taken in one
could not be released from the next.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import psycopg2

from digit_predictor.db.pool import translate

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works; it only has to be the same for every process of this app.
ADVISORY_LOCK_KEY = 4_242_001


@dataclass(frozen=True)
class Migration:
    version: str
    name: str
    sql: str


def available_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        version, _, name = path.stem.partition("_")
        if not version.isdigit():
            raise ValueError(f"migration file {path.name} must start with a number")
        migrations.append(Migration(version, name, path.read_text()))
    return migrations


def migrate(
    dsn: str, directory: Path = MIGRATIONS_DIR, *, connect_timeout_s: int = 10
) -> list[str]:
    """Apply pending migrations; return the versions applied by this call.

    Raises DatabaseUnavailable (or RowRejected) rather than the driver's errors.
    """
    try:
        return _migrate(dsn, directory, connect_timeout_s)
    except psycopg2.Error as exc:
        raise translate(exc) from exc


def _migrate(dsn: str, directory: Path, connect_timeout_s: int) -> list[str]:
    applied_now: list[str] = []
    conn = psycopg2.connect(dsn, connect_timeout=connect_timeout_s)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
            cur.execute(
                """CREATE TABLE IF NOT EXISTS schema_migrations (
                       version    text PRIMARY KEY,
                       name       text NOT NULL,
                       applied_at timestamptz NOT NULL DEFAULT now())"""
            )
        for migration in available_migrations(directory):
            # One transaction per migration: a failing one leaves no half-applied schema.
            # Checked under the lock: another runner may have applied it meanwhile.
            with conn, conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_KEY,))
                cur.execute(
                    "SELECT 1 FROM schema_migrations WHERE version = %s", (migration.version,)
                )
                if cur.fetchone() is not None:
                    continue
                cur.execute(migration.sql)
                cur.execute(
                    "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            log.info("applied migration %s_%s", migration.version, migration.name)
            applied_now.append(migration.version)
    finally:
        conn.close()
    return applied_now
