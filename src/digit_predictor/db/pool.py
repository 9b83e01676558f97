"""A thread-safe connection pool that survives PostgreSQL restarts without a ping per borrow.

A borrow costs no round trip. A connection whose server went away is noticed without one: a
server that ends a session (restart, `pg_terminate_backend`) sends a last message and closes the
socket, so an idle connection with something to read is dead. A connection idle for longer than
`idle_check_s` answers `SELECT 1` first (a peer that vanished silently sends nothing). A
connection that breaks while in use is thrown away, and so is every idle one older than it,
since they most likely died together.

This is also where psycopg2's errors become the data layer's own two (`db.errors`), once.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg2
import psycopg2.extensions

from digit_predictor.db.errors import DatabaseUnavailable, RowRejected

log = logging.getLogger(__name__)

Connection = psycopg2.extensions.connection

__all__ = ["Connection", "Database", "DatabaseUnavailable", "RowRejected", "translate"]


def translate(exc: psycopg2.Error) -> DatabaseUnavailable | RowRejected:
    """The data layer's error for a driver error: the values were refused, or not (transient)."""
    message = str(exc).strip() or type(exc).__name__
    if isinstance(exc, psycopg2.IntegrityError | psycopg2.DataError):
        return RowRejected(message)
    # Lost connection, statement timeout, a schema not migrated yet: all "try again later".
    return DatabaseUnavailable(message)


@dataclass
class _Idle:
    conn: Connection
    since: float  # monotonic time it was returned


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
        idle_check_s: float = 30.0,
    ) -> None:
        self.dsn = dsn
        self._borrow_timeout_s = borrow_timeout_s
        self._idle_check_s = idle_check_s
        self._min_size = min_size
        self._slots = threading.BoundedSemaphore(max_size)
        self._connect_kwargs: dict[str, Any] = {
            "connect_timeout": connect_timeout_s,
            "options": f"-c statement_timeout={statement_timeout_ms}",
            "application_name": "digit-predictor",
        }
        self._idle: list[_Idle] = []  # most recently used last: borrowed first (warm caches)
        self._lock = threading.Lock()
        self._up: bool | None = None  # None until the first attempt

    @classmethod
    def from_settings(cls, settings: Any) -> Database:
        return cls(
            settings.dsn,
            min_size=settings.db_pool_min,
            max_size=settings.db_pool_max,
            statement_timeout_ms=settings.db_statement_timeout_ms,
            connect_timeout_s=settings.db_connect_timeout_s,
        )

    @property
    def is_up(self) -> bool:
        """Whether the last thing tried on this database worked (the one source of db_up)."""
        return bool(self._up)

    @contextmanager
    def connection(self, *, autocommit: bool = False) -> Iterator[Connection]:
        """Borrow a connection; commit on success, roll back on error, discard it if broken.

        `autocommit`: each statement is its own transaction, with no BEGIN and COMMIT round
        trips around it (for a single statement that is atomic by itself).
        Raises DatabaseUnavailable or RowRejected for anything the driver raises.
        """
        if not self._slots.acquire(timeout=self._borrow_timeout_s):
            raise DatabaseUnavailable("no free database connection within the borrow timeout")
        try:
            conn = self._borrow()
            borrowed_at = time.monotonic()
            broken = False
            try:
                conn.autocommit = autocommit  # client-side only: nothing is sent
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
                if broken:
                    self._discard_idle_older_than(borrowed_at)
                self._up = not broken
                if isinstance(exc, psycopg2.Error):
                    raise translate(exc) from exc
                raise
            else:
                self._up = True
            finally:
                if autocommit and not (broken or conn.closed):
                    try:
                        conn.autocommit = False
                    except psycopg2.Error:
                        broken = True
                self._give_back(conn, broken=broken or bool(conn.closed))
        finally:
            self._slots.release()

    def _borrow(self) -> Connection:
        while True:
            with self._lock:
                idle = self._idle.pop() if self._idle else None
            if idle is None:
                return self._connect()
            if self._usable(idle):
                return idle.conn
            log.info("discarding a broken database connection")
            _close_quietly(idle.conn)

    def _usable(self, idle: _Idle) -> bool:
        conn = idle.conn
        if conn.closed:
            return False
        # Readable while idle: the server said goodbye (or sent something we never asked for).
        readable, _, _ = select.select([conn], [], [], 0)
        if readable:
            return False
        if time.monotonic() - idle.since < self._idle_check_s:
            return True
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.rollback()
        except psycopg2.Error:
            return False
        return True

    def _connect(self) -> Connection:
        try:
            conn: Connection = psycopg2.connect(self.dsn, **self._connect_kwargs)
        except psycopg2.Error as exc:
            self._up = False
            raise DatabaseUnavailable(str(exc).strip()) from exc
        return conn

    def _give_back(self, conn: Connection, *, broken: bool) -> None:
        if broken:
            _close_quietly(conn)
            return
        with self._lock:
            self._idle.append(_Idle(conn, time.monotonic()))

    def _discard_idle_older_than(self, moment: float) -> None:
        with self._lock:
            stale = [i for i in self._idle if i.since <= moment]
            self._idle = [i for i in self._idle if i.since > moment]
        for idle in stale:
            _close_quietly(idle.conn)

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless the database answers (tries a second connection
        when the first one turns out to be broken)."""
        for attempt in range(2):
            try:
                with self.connection() as conn, conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return
            except DatabaseUnavailable:
                if attempt:
                    raise

    def warm_up(self) -> None:
        """Open min_size connections now, if the database is reachable."""
        opened = []
        try:
            for _ in range(self._min_size):
                opened.append(self._connect())
            self._up = True
        except DatabaseUnavailable:
            pass
        finally:
            for conn in opened:
                self._give_back(conn, broken=False)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for item in idle:
            _close_quietly(item.conn)


def _close_quietly(conn: Connection) -> None:
    with suppress(psycopg2.Error):
        conn.close()
