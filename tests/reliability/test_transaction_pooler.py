"""The app behind PgBouncer in transaction mode, as deploy/k8s/overlays/cnpg runs it.

A real PgBouncer on loopback in front of the test PostgreSQL, configured as CloudNativePG's
Pooler is (transaction pooling; the `options` startup parameter ignored). It shows what
docs/deploy.md ("PgBouncer and what needs a session") says: a session-level lock means nothing
behind it, migrations (transaction-scoped lock) are safe through it even when run concurrently,
the api stores every prediction through it, and the per-connection statement_timeout is lost
unless the server sets a default.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from digit_predictor.db import Database, DatabaseUnavailable
from digit_predictor.db.migrate import ADVISORY_LOCK_KEY, available_migrations, migrate
from tests.api import drawings
from tests.pg import free_port
from tests.reliability.load import run_load
from tests.reliability.test_load import stored_request_ids
from tests.servers import api_env, api_server, wait_for

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(300)]


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or (
        "/usr/sbin/pgbouncer" if Path("/usr/sbin/pgbouncer").exists() else None
    )
    if found:
        return found
    if os.environ.get("CI"):
        pytest.fail("pgbouncer is missing: .ci/run installs it (apt-get install pgbouncer)")
    pytest.skip("pgbouncer not installed (apt-get install pgbouncer)")


def via(url: str, port: int) -> str:
    """The same database and user, through the pooler's port."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


@pytest.fixture
def pooler(make_database: object, pg_admin_url: str) -> Iterator[tuple[str, str]]:
    """(direct URL, pooled URL) of a fresh database; the pooler has 2 server connections."""
    binary = pgbouncer_binary()
    direct = make_database()  # type: ignore[operator]
    server = urlsplit(pg_admin_url)
    folder = Path(tempfile.mkdtemp(prefix="digit-pgbouncer-"))
    folder.chmod(0o755)  # as root, pgbouncer runs as `postgres` and must read its files
    port = free_port()
    (folder / "users.txt").write_text(f'"{server.username}" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host=127.0.0.1 port={server.port}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
default_pool_size = 2
max_client_conn = 200
; as CloudNativePG's Pooler: these startup parameters are dropped, not refused
ignore_startup_parameters = extra_float_digits,options
"""
    )
    for name in ("users.txt", "pgbouncer.ini"):
        (folder / name).chmod(0o644)
    args = [binary, str(folder / "pgbouncer.ini")]
    if os.geteuid() == 0:
        args[1:1] = ["-u", "postgres"]  # PgBouncer refuses to run as root
    log = (folder / "pgbouncer.log").open("wb")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
    pooled = via(direct, port)

    def answers() -> bool:
        try:
            psycopg2.connect(pooled, connect_timeout=2).close()
            return True
        except psycopg2.OperationalError:
            return False

    try:
        wait_for(answers, 20.0)
        yield direct, pooled
    finally:
        process.terminate()
        process.wait(10)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


def advisory_locks(direct: str) -> int:
    conn = psycopg2.connect(direct)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
            row = cur.fetchone()
            assert row is not None
            return int(row[0])
    finally:
        conn.close()


def test_a_session_lock_means_nothing_behind_a_transaction_pooler(
    pooler: tuple[str, str],
) -> None:
    # Why db/migrate.py takes a transaction-scoped lock: two clients of the pooler share
    # server sessions, so the second "gets" a session lock the first one holds.
    _, pooled = pooler
    first, second = psycopg2.connect(pooled), psycopg2.connect(pooled)
    try:
        first.autocommit = second.autocommit = True
        with first.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
        with second.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_LOCK_KEY,))
            row = cur.fetchone()
        assert row == (True,), "the pooler gave the second client its own session"
    finally:
        first.close()
        second.close()


def test_concurrent_migrations_through_the_pooler(pooler: tuple[str, str]) -> None:
    direct, pooled = pooler
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(migrate(pooled))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    versions = [m.version for m in available_migrations()]
    # Six runners on two server connections: each migration applied exactly once.
    assert sorted(v for applied in results for v in applied) == versions
    conn = psycopg2.connect(direct)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT version FROM schema_migrations ORDER BY version")
            assert [row[0] for row in cur.fetchall()] == versions
    finally:
        conn.close()
    assert advisory_locks(direct) == 0  # nothing left held on a pooled server session
    assert migrate(pooled) == []


def test_the_api_stores_every_prediction_through_the_pooler(
    pooler: tuple[str, str], reliability_model: Path
) -> None:
    direct, pooled = pooler
    images = [drawings.drawing_png(digit) for digit in drawings.STROKES]
    # The api migrates at start, through the pooler; 8 workers' connections share 2 servers.
    with api_server(api_env(pooled, reliability_model, db_pool_max=8), ready_path="/readyz") as api:
        result = run_load(api.url, images, total=300, concurrency=8)
        assert result.errors() == []
        assert result.statuses() == {201: 300}
    answered = sorted(str(o.body["request_id"]) for o in result.outcomes if o.body)
    assert sorted(stored_request_ids(direct)) == answered


def _statement_timeout(url: str) -> str:
    # The pool asks for a 5 s statement_timeout with the `options` startup parameter.
    db = Database(url, max_size=1, statement_timeout_ms=5000)
    try:
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute("SHOW statement_timeout")
            row = cur.fetchone()
            assert row is not None
            return str(row[0])
    finally:
        db.close()


def test_statement_timeout_needs_a_server_side_default_behind_the_pooler(
    pooler: tuple[str, str],
) -> None:
    direct, pooled = pooler
    assert _statement_timeout(direct) == "5s"
    assert _statement_timeout(pooled) == "0"  # the pooler dropped `options`
    # What the Cluster's bootstrap does for its role (here for this test's database only).
    name = urlsplit(direct).path.lstrip("/")
    conn = psycopg2.connect(direct)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f"ALTER DATABASE \"{name}\" SET statement_timeout = '5s'")
            # Defaults apply to new server sessions: close the pooler's (it opens new ones).
            cur.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            )
    finally:
        conn.close()
    wait_for(lambda: _statement_timeout_or_none(pooled) == "5s", 10.0)


def _statement_timeout_or_none(url: str) -> str | None:
    """None while the pooler still hands out a server connection that was closed under it."""
    try:
        return _statement_timeout(url)
    except DatabaseUnavailable:
        return None
