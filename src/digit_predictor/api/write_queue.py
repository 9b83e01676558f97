"""Prediction rows survive a database outage: a bounded in-memory queue drained in the background.

The request path first tries to write the row itself (`PredictionStore.save`). When PostgreSQL is
unreachable, or rows are already waiting (so they keep their order and requests stop paying
connection timeouts), the row goes into the queue and the client gets 202. One background thread
retries the oldest row with exponential backoff until the database is back. Every row carries the
request_id and created_at the api gave it, and `insert_prediction` is idempotent on request_id, so
a retry after an ambiguous failure never writes a second row.

When the queue is full the prediction is refused (503) rather than answered and lost.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import psycopg2

from digit_predictor.api.metrics import Metrics
from digit_predictor.db import Database, DatabaseUnavailable
from digit_predictor.db.migrate import migrate
from digit_predictor.db.queries import NewPrediction, Prediction, insert_prediction

log = logging.getLogger(__name__)

# Errors that no retry can fix: the database refused this row's values. Anything else (connection
# lost, timeout, schema not there yet) is taken as transient and retried.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    psycopg2.DataError,
    psycopg2.IntegrityError,
    ValueError,
    TypeError,
)
# Signs that the database is unreachable: the request path queues the row instead of failing.
UNAVAILABLE_ERRORS: tuple[type[Exception], ...] = (
    DatabaseUnavailable,
    psycopg2.OperationalError,
    psycopg2.InterfaceError,
)


# Rows carry their drawing: bound the bytes too, or 10,000 hostile 1 MiB uploads during an outage
# would hold 10 GB. Drawings from the canvas are a few kB, so this rarely binds before the count.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class QueueFull(RuntimeError):
    """The database is unavailable and the write queue holds as many rows as it may."""


class WriteQueue:
    """A bounded FIFO of rows to write, drained by one daemon thread with backoff."""

    def __init__(
        self,
        write: Callable[[NewPrediction], object],
        *,
        maxsize: int,
        metrics: Metrics,
        max_bytes: int = DEFAULT_MAX_BYTES,
        backoff_initial_s: float = 0.1,
        backoff_max_s: float = 5.0,
    ) -> None:
        self._write = write
        self.maxsize = maxsize
        self.max_bytes = max_bytes
        self._bytes = 0
        self._metrics = metrics
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._items: deque[NewPrediction] = deque()
        self._cond = threading.Condition()
        self._wake = threading.Event()  # cuts a backoff sleep short (on close)
        self._closing = False
        self._flush_deadline = 0.0
        self._thread: threading.Thread | None = None
        self._refused_since_log = 0
        self._last_full_log = 0.0
        metrics.queue_capacity.set(maxsize)
        metrics.queue_length.set_function(lambda: len(self._items))

    def __len__(self) -> int:
        return len(self._items)

    @property
    def backlogged(self) -> bool:
        return bool(self._items)

    def put(self, row: NewPrediction) -> None:
        with self._cond:
            if self._closing:
                raise QueueFull("the api is shutting down")
            size = len(row.image_data)
            if len(self._items) >= self.maxsize or self._bytes + size > self.max_bytes:
                self._metrics.queue_full.inc()
                self._log_full()
                raise QueueFull(
                    f"the write queue is full ({len(self._items)} rows, {self._bytes} bytes)"
                )
            if not self._items:
                log.warning("database unavailable: queueing prediction rows until it is back")
            self._items.append(row)
            self._bytes += size
            self._metrics.queued_writes.inc()
            self._cond.notify()

    def _log_full(self) -> None:
        # At most one line every 5 s, with the count, so a full queue cannot flood the logs.
        self._refused_since_log += 1
        now = time.monotonic()
        if now - self._last_full_log >= 5.0:
            log.error(
                "write queue full: refusing predictions until the database is back",
                extra={
                    "queued": len(self._items),
                    "queued_bytes": self._bytes,
                    "refused": self._refused_since_log,
                },
            )
            self._last_full_log = now
            self._refused_since_log = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="db-write-queue", daemon=True)
        self._thread.start()

    def close(self, flush_timeout_s: float = 5.0) -> int:
        """Stop taking rows, try to write the waiting ones for a while; return how many are left."""
        with self._cond:
            self._closing = True
            self._flush_deadline = time.monotonic() + flush_timeout_s
            self._cond.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(flush_timeout_s + 5.0)
        left = list(self._items)
        if left:
            log.error(
                "shutting down with prediction rows that could not be written",
                extra={"lost_rows": len(left), "request_ids": [str(r.request_id) for r in left]},
            )
        return len(left)

    def _run(self) -> None:
        backoff = self._backoff_initial_s
        drained = 0
        while True:
            with self._cond:
                while not self._items and not self._closing:
                    self._cond.wait()
                if not self._items:
                    return  # closing, nothing left
                if self._closing and time.monotonic() >= self._flush_deadline:
                    return
                row = self._items[0]
            try:
                self._write(row)
            except PERMANENT_ERRORS as exc:
                # Should never happen (the api builds every row); keep it visible, then move on.
                log.error(
                    "the database refused a queued prediction row; dropping it",
                    extra={"row_request_id": str(row.request_id), "error": str(exc)},
                )
                self._metrics.db_write_failures.labels(reason="rejected").inc()
                self._pop()
            except Exception as exc:  # unreachable database and friends: retry later
                self._metrics.db_write_failures.labels(reason="unavailable").inc()
                self._metrics.db_up.set(0)
                log.info(
                    "queued write failed; retrying",
                    extra={"retry_in_s": round(backoff, 2), "queued": len(self), "error": str(exc)},
                )
                if self._closing:  # flushing: retry often, but do not spin
                    time.sleep(min(backoff, 0.25))
                else:
                    self._wake.wait(backoff)
                backoff = min(backoff * 2.0, self._backoff_max_s)
            else:
                self._metrics.db_writes.labels(path="queue").inc()
                self._metrics.db_up.set(1)
                backoff = self._backoff_initial_s
                drained += 1
                if not self._pop():
                    log.warning("write queue drained", extra={"rows_written": drained})
                    drained = 0

    def _pop(self) -> int:
        with self._cond:
            row = self._items.popleft()
            self._bytes -= len(row.image_data)
            return len(self._items)


class PredictionStore:
    """Writes prediction rows: directly when the database answers, through the queue when not."""

    def __init__(
        self, db: Database, *, queue_size: int, metrics: Metrics, connect_timeout_s: int = 3
    ) -> None:
        self.db = db
        self.connect_timeout_s = connect_timeout_s
        self.metrics = metrics
        self.queue = WriteQueue(self.insert, maxsize=queue_size, metrics=metrics)
        self._schema_ready = False
        self._schema_lock = threading.Lock()

    def ensure_schema(self) -> None:
        """Apply pending migrations once (advisory-locked, so concurrent starters are safe)."""
        if self._schema_ready:
            return
        with self._schema_lock:
            if not self._schema_ready:
                applied = migrate(self.db.dsn, connect_timeout_s=self.connect_timeout_s)
                if applied:
                    log.info("applied migrations", extra={"versions": applied})
                self._schema_ready = True

    def insert(self, row: NewPrediction) -> Prediction:
        self.ensure_schema()
        stored = insert_prediction(self.db, row)
        self.metrics.db_up.set(1)
        return stored

    def save(self, row: NewPrediction) -> Prediction | None:
        """The stored row, or None when it was queued. Raises QueueFull when it cannot be kept."""
        if not self.queue.backlogged:
            try:
                stored = self.insert(row)
            except UNAVAILABLE_ERRORS as exc:
                log.warning("database write failed; queueing the row", extra={"error": str(exc)})
                self.metrics.db_write_failures.labels(reason="unavailable").inc()
                self.metrics.db_up.set(0)
            else:
                self.metrics.db_writes.labels(path="direct").inc()
                return stored
        self.queue.put(row)
        return None

    def start(self) -> None:
        try:
            self.ensure_schema()
        except Exception as exc:
            log.warning(
                "database not reachable at start-up; serving anyway, rows will be queued",
                extra={"error": str(exc)},
            )
        self.db.warm_up()
        self.queue.start()

    def close(self, flush_timeout_s: float = 5.0) -> None:
        self.queue.close(flush_timeout_s)
        self.db.close()
