"""Shared fixtures: a real PostgreSQL for every test that needs one.

`TEST_DATABASE_URL` (a superuser URL of an existing server) is used when set; otherwise the
session starts a throwaway cluster with scripts/pg_cluster.sh and removes it at the end.
Each test gets clean tables; tests that need a database of their own ask `make_database`.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg2
import pytest

from digit_predictor.db import Database
from digit_predictor.db.migrate import migrate

ROOT = Path(__file__).resolve().parents[1]
PG_CLUSTER = ROOT / "scripts" / "pg_cluster.sh"


@dataclass
class PostgresServer:
    admin_url: str  # a superuser on the maintenance database
    data_dir: Path | None  # set when this test run owns the cluster and may restart it

    def restart(self) -> None:
        if self.data_dir is None:
            pytest.skip("the server comes from TEST_DATABASE_URL; this test run cannot restart it")
        subprocess.run([str(PG_CLUSTER), "restart", str(self.data_dir)], check=True)

    def stop(self) -> None:
        if self.data_dir is None:
            pytest.skip("the server comes from TEST_DATABASE_URL; this test run cannot stop it")
        subprocess.run([str(PG_CLUSTER), "stop", str(self.data_dir)], check=True)

    def start(self) -> None:
        assert self.data_dir is not None
        subprocess.run(
            [str(PG_CLUSTER), "start", str(self.data_dir)], check=True, stdout=subprocess.DEVNULL
        )


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path="/" + name))


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield PostgresServer(admin_url=given, data_dir=None)
        return
    # /tmp rather than the checkout: as root the cluster belongs to `postgres`, which must be
    # able to reach its folder even when the checkout lives in a private home directory.
    parent = Path(tempfile.mkdtemp(prefix="digit-predictor-pg-"))
    parent.chmod(0o755)
    data_dir = parent / "cluster"
    out = subprocess.run(
        [str(PG_CLUSTER), "start", str(data_dir), str(_free_port())],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.exit(f"could not start a throwaway PostgreSQL: {out.stderr}", returncode=3)
    url = out.stdout.strip().splitlines()[-1]
    try:
        yield PostgresServer(admin_url=with_database(url, "postgres"), data_dir=data_dir)
    finally:
        subprocess.run([str(PG_CLUSTER), "destroy", str(data_dir)], check=False)
        parent.rmdir()


@pytest.fixture(scope="session")
def pg_admin_url(pg_server: PostgresServer) -> str:
    return pg_server.admin_url


def _admin_execute(admin_url: str, sql: str) -> None:
    conn = psycopg2.connect(admin_url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture
def make_database(pg_admin_url: str) -> Iterator[Callable[[], str]]:
    """Create fresh empty databases on demand; all are dropped after the test."""
    created: list[str] = []

    def create() -> str:
        name = f"test_{uuid.uuid4().hex[:12]}"
        _admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
        created.append(name)
        return with_database(pg_admin_url, name)

    yield create
    for name in created:
        _admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def migrated_database_url(pg_admin_url: str) -> Iterator[str]:
    name = f"test_session_{uuid.uuid4().hex[:8]}"
    _admin_execute(pg_admin_url, f'CREATE DATABASE "{name}"')
    url = with_database(pg_admin_url, name)
    migrate(url)
    yield url
    _admin_execute(pg_admin_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def database_url(migrated_database_url: str) -> str:
    """A migrated database whose tables are empty at the start of the test."""
    _admin_execute(migrated_database_url, "TRUNCATE predictions RESTART IDENTITY")
    return migrated_database_url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, min_size=1, max_size=5, statement_timeout_ms=5000)
    yield database
    database.close()
