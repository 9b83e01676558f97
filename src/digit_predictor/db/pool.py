"""A thread-safe connection pool that survives PostgreSQL restarts.

psycopg2's pool hands out whatever it holds, even a connection whose server went away, and
raises at once when every connection is busy. This wrapper waits for a free slot instead, checks
a connection before lending it, and throws broken ones away so the next borrow reconnects.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.extensions
import psycopg2.pool

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached, or the connection broke mid-way."""


class Database:
    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 1,
        max_size: int = 10,
        statement_timeout_ms: int = 5000,
        connect_timeout_s: int = 3,
        borrow_timeout_s: float = 10.0,
    ) -> None:
        self.dsn = dsn
        self._borrow_timeout_s = borrow_timeout_s
        self._max_size = max_size
        self._slots = threading.BoundedSemaphore(max_size)
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": connect_timeout_s,
            "options": f"-c statement_timeout={statement_timeout_ms}",
            "application_name": "digit-predictor",
        }
        # min_size connections are opened lazily (first borrow), so a process can start while the
        # database is still down and become healthy when it appears.
        self._min_size = min_size
        self._pool: psycopg2.pool.ThreadedConnectionPool | None = None
        self._pool_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        return cls(
            settings.dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            connect_timeout_s=settings.db_connect_timeout_s,
        )

    def _get_pool(self) -> psycopg2.pool.ThreadedConnectionPool:
        with self._pool_lock:
            if self._pool is None:
                # Built empty so that construction never connects. psycopg2 closes a returned
                # connection once `minconn` idle ones are kept, so raise it to the slot count to
                # keep every connection for reuse. The semaphore, not maxconn, limits borrows.
                pool = psycopg2.pool.ThreadedConnectionPool(
                    0, 10_000, self.dsn, **self._connect_kwargs
                )
                pool.minconn = self._max_size
                self._pool = pool
            return self._pool

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        """Borrow a connection; commit on success, roll back on error, discard it if broken."""
        if not self._slots.acquire(timeout=self._borrow_timeout_s):
            raise DatabaseUnavailable("no free database connection within the borrow timeout")
        try:
            pool = self._get_pool()
            conn = self._checked_out(pool)
            broken = False
            try:
                yield conn
                conn.commit()
            except BaseException as exc:
                # A statement error (timeout, constraint) leaves a usable connection; a lost
                # server leaves a closed one, which must not go back into the pool.
                broken = bool(conn.closed)
                if not broken:
                    try:
                        conn.rollback()
                    except psycopg2.Error:
                        broken = True
                if broken and isinstance(exc, psycopg2.Error):
                    raise DatabaseUnavailable(str(exc).strip()) from exc
                raise
            finally:
                pool.putconn(conn, close=broken or bool(conn.closed))
        finally:
            self._slots.release()

    def _checked_out(self, pool: psycopg2.pool.ThreadedConnectionPool) -> Connection:
        """A connection that has just answered `SELECT 1`; stale ones are closed and replaced."""
        # The pool may hold several connections that died with the server; try each once.
        for _ in range(self._pool_size(pool) + 1):
            try:
                conn = pool.getconn()
            except psycopg2.OperationalError as exc:
                raise DatabaseUnavailable(str(exc).strip()) from exc
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                conn.rollback()
                return conn
            except psycopg2.Error:
                log.info("discarding a broken database connection")
                pool.putconn(conn, close=True)
        raise DatabaseUnavailable("could not get a working database connection")

    @staticmethod
    def _pool_size(pool: psycopg2.pool.ThreadedConnectionPool) -> int:
        return len(pool._pool) + len(pool._used)  # type: ignore[attr-defined]

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers."""
        with self.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT 1")

    def warm_up(self) -> None:
        """Open min_size connections now, if the database is reachable."""
        conns = []
        try:
            for _ in range(self._min_size):
                conns.append(self._checked_out(self._get_pool()))
        except DatabaseUnavailable:
            pass
        finally:
            for conn in conns:
                self._get_pool().putconn(conn)

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.closeall()
                self._pool = None
