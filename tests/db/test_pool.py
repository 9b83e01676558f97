import threading
import time

import psycopg2
import pytest

from digit_predictor.db import Database, DatabaseUnavailable
from tests.pg import PostgresServer


def _backend_pid(db: Database) -> int:
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_backend_pid()")
        row = cur.fetchone()
    assert row is not None
    return int(row[0])


def test_connections_are_reused(db: Database) -> None:
    assert _backend_pid(db) == _backend_pid(db)


def test_pool_recovers_after_its_connections_are_killed(db: Database, pg_admin_url: str) -> None:
    # Hold three connections at once so the pool keeps three, then kill them all server-side.
    with db.connection(), db.connection(), db.connection():
        pass
    admin = psycopg2.connect(pg_admin_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE application_name = 'digit-predictor' AND datname = current_database()
                  OR application_name = 'digit-predictor' AND datname LIKE 'test_%'"""
        )
        killed = cur.fetchone()
    admin.close()
    assert killed is not None and killed[0] >= 3

    for _ in range(5):  # every call succeeds; none is handed a dead connection
        db.ping()


def test_pool_recovers_after_a_server_restart(db: Database, pg_server: PostgresServer) -> None:
    old_pid = _backend_pid(db)
    pg_server.restart()
    assert _backend_pid(db) != old_pid


def test_unreachable_database_is_a_clear_error() -> None:
    db = Database("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=1)
    with pytest.raises(DatabaseUnavailable):
        db.ping()


def test_borrowers_wait_for_a_free_connection(database_url: str) -> None:
    db = Database(database_url, max_size=2, borrow_timeout_s=10)
    results: list[int] = []

    def work() -> None:
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.2), 1")
            row = cur.fetchone()
            assert row is not None
            results.append(row[1])

    threads = [threading.Thread(target=work) for _ in range(6)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [1] * 6
    # Two at a time: three rounds of 0.2 s, never more than the pool's size at once.
    assert time.monotonic() - started >= 0.55
    db.close()


def test_statement_timeout_applies(database_url: str) -> None:
    db = Database(database_url, statement_timeout_ms=100)
    with (
        pytest.raises(DatabaseUnavailable, match="statement timeout"),
        db.connection() as conn,
        conn.cursor() as cur,
    ):
        cur.execute("SELECT pg_sleep(2)")
    db.ping()  # the connection was rolled back, not broken
    db.close()


def _last_query(admin_url: str, pid: int) -> str:
    admin = psycopg2.connect(admin_url)
    try:
        with admin.cursor() as cur:
            cur.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
            row = cur.fetchone()
    finally:
        admin.close()
    assert row is not None
    return str(row[0])


MARKER = "SELECT pg_backend_pid() AS marker"


def _mark(db: Database) -> int:
    """Run a marker statement in autocommit (no COMMIT after it); return the backend's pid."""
    with db.connection() as conn:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(MARKER)
            row = cur.fetchone()
        conn.autocommit = False
    assert row is not None
    return int(row[0])


def test_borrowing_a_connection_costs_no_round_trip(db: Database, pg_admin_url: str) -> None:
    pid = _mark(db)
    for _ in range(3):
        with db.connection():
            pass
    # No `SELECT 1` per borrow: the last statement that backend ran is still the marker.
    assert _last_query(pg_admin_url, pid) == MARKER


def test_a_connection_idle_for_long_is_checked_before_it_is_lent(
    database_url: str, pg_admin_url: str
) -> None:
    db = Database(database_url, idle_check_s=0.0)
    pid = _mark(db)
    with db.connection():
        pass
    assert _last_query(pg_admin_url, pid) == "ROLLBACK"  # after the check's `SELECT 1`
    db.close()
