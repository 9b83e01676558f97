"""Shared fixtures: a real PostgreSQL for every test that needs one.

`TEST_DATABASE_URL` (a superuser URL of an existing server) is used when set; otherwise the
session starts a throwaway cluster with scripts/pg_cluster.sh and removes it at the end.
Each test gets clean tables; tests that need a database of their own ask `make_database`.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator

import psycopg2
import pytest

from digit_predictor.db import Database
from digit_predictor.db.migrate import migrate
from tests.pg import ClusterFailed, PostgresServer, start_cluster, with_database


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    given = os.environ.get("TEST_DATABASE_URL")
    if given:
        yield PostgresServer(admin_url=given, data_dir=None)
        return
    try:
        server = start_cluster()
    except ClusterFailed as exc:
        pytest.exit(str(exc), returncode=3)
    try:
        yield server
    finally:
        server.destroy()


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
    """A migrated database whose tables are empty at the start of the test.

    The session's api servers share it and all serve the same test model; a test that serves
    another model, or promotes one, takes `own_database_url` so no other api swaps to it.
    """
    _admin_execute(migrated_database_url, "TRUNCATE predictions, models RESTART IDENTITY")
    return migrated_database_url


@pytest.fixture
def own_database_url(make_database: Callable[[], str]) -> str:
    """A freshly migrated database of this test's own (a registry no other api listens to)."""
    url = make_database()
    migrate(url)
    return url


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url, min_size=1, max_size=5, statement_timeout_ms=5000)
    yield database
    database.close()
