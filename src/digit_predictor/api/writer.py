"""Group commit: one writer thread per api process stores the rows of every request in batches.

A request puts its row at the back of a bounded queue and waits, briefly, for its own outcome
(`save`). The writer takes everything waiting (up to a batch's rows and bytes) and stores it with
one multi-row INSERT in one transaction, so at full load a commit (and its fsync) is shared by
dozens of rows instead of paid by each. When PostgreSQL is away the batch stays at the front
and is retried with a short backoff; requests then answer 202 at once (their rows are queued and
written in order once it is back, in the same large batches, so the backlog drains in a second
or two). Rows carry the request_id the api gave them and the INSERT ignores a request_id already
stored, so a retry after an ambiguous commit never writes a second row.

Full (rows or bytes) -> `QueueFull` (the route answers 503) rather than accept a row it may lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import anyio

from digit_predictor.api.metrics import Metrics
from digit_predictor.api.spool import Spool
from digit_predictor.db import Database, DatabaseUnavailable, RowRejected
from digit_predictor.db.queries import (
    NewPrediction,
    Prediction,
    insert_predictions,
    record_feedback,
)

log = logging.getLogger(__name__)

WriteBatch = Callable[[Sequence[NewPrediction]], Mapping[uuid.UUID, int]]

# Rows carry their drawing: bound the bytes too, or 10,000 hostile 1 MiB uploads during an outage
# would hold 10 GB. Drawings from the canvas are a few kB, so this rarely binds before the count.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024
# One statement per batch: large enough to drain an outage's backlog in a few commits, small
# enough that one batch stays well under the statement timeout.
BATCH_ROWS = 500
BATCH_BYTES = 4 * 1024 * 1024


class QueueFull(RuntimeError):
    """The write queue holds as many rows (or bytes) as it may."""


class Pending:
    """One row on its way to PostgreSQL; `done` once it is stored or refused."""

    __slots__ = ("_callbacks", "done", "error", "id", "row", "size", "spooled")

    def __init__(self, row: NewPrediction, *, spooled: bool = False) -> None:
        self.row = row
        self.size = len(row.image_data)
        self.done = False  # written under the writer's lock; nobody blocks on it
        self.id: int | None = None
        self.error: RowRejected | None = None
        self.spooled = spooled  # also on local disk (answered 202): remove it once written
        self._callbacks: list[Callable[[], None]] = []

    def on_done(self, callback: Callable[[], None]) -> None:
        """Call `callback` (from the writer's thread) once the row is settled; at once if it
        already is. Called and settled under the writer's lock, so none is ever missed."""
        if self.done:
            callback()
        else:
            self._callbacks.append(callback)

    def settle(self) -> None:
        self.done = True
        for callback in self._callbacks:
            callback()


class GroupCommitWriter:
    def __init__(
        self,
        write_batch: WriteBatch,
        *,
        max_rows: int,
        metrics: Metrics,
        max_bytes: int = DEFAULT_MAX_BYTES,
        batch_rows: int = BATCH_ROWS,
        batch_bytes: int = BATCH_BYTES,
        backoff_initial_s: float = 0.05,
        backoff_max_s: float = 0.5,
        spool: Spool | None = None,
    ) -> None:
        self._write_batch = write_batch
        self._spool = spool
        self.max_rows = max_rows
        self.max_bytes = max_bytes
        self._batch_rows = batch_rows
        self._batch_bytes = batch_bytes
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._metrics = metrics
        self._items: deque[Pending] = deque()
        self._bytes = 0
        self._cond = threading.Condition()
        self._wake = threading.Event()  # cuts a backoff sleep short (on close)
        self._closing = False
        self._flush_deadline = 0.0
        self._failing = False  # the last write attempt found the database unavailable
        self._thread: threading.Thread | None = None
        self._refused_since_log = 0
        self._last_full_log = 0.0
        metrics.queue_capacity.set(max_rows)
        metrics.queue_length.set_function(lambda: len(self._items))

    def __len__(self) -> int:
        return len(self._items)

    async def save(self, row: NewPrediction, wait_s: float) -> int | None:
        """The row's id once stored, or None when it is still queued after `wait_s` (then it
        is written later, and is on disk first if there is a spool). Raises QueueFull, or
        RowRejected if PostgreSQL refused the row. The wait for the commit holds no thread."""
        pending = self.submit(row)
        # While the database is known to be away, waiting would only slow every answer down.
        if not self._failing:
            loop = asyncio.get_running_loop()
            stored = loop.create_future()

            def wake() -> None:  # from the writer's thread
                with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits
                    loop.call_soon_threadsafe(_resolve, stored)

            with self._cond:
                pending.on_done(wake)
            try:
                async with asyncio.timeout(wait_s):
                    await stored
            except TimeoutError:
                pass
        spool = self._spool
        if spool is not None and not pending.done:
            with self._cond:  # the writer removes a spooled row from disk once it is written
                pending.spooled = not pending.done
            if pending.spooled:
                # On disk before the 202 goes out: a worker killed now loses nothing.
                await anyio.to_thread.run_sync(spool.add, row)  # SQLite: blocking I/O
        if pending.error is not None:
            raise pending.error
        return pending.id

    def submit(self, row: NewPrediction, *, spooled: bool = False) -> Pending:
        pending = Pending(row, spooled=spooled)
        with self._cond:
            if self._closing:
                raise QueueFull("the api is shutting down")
            if len(self._items) >= self.max_rows or self._bytes + pending.size > self.max_bytes:
                self._metrics.queue_full.inc()
                self._log_full()
                raise QueueFull(
                    f"the write queue is full ({len(self._items)} rows, {self._bytes} bytes)"
                )
            self._items.append(pending)
            self._bytes += pending.size
            self._cond.notify()
        return pending

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
        self._thread = threading.Thread(target=self._run, name="db-group-commit", daemon=True)
        self._thread.start()

    def close(self, flush_timeout_s: float = 5.0) -> int:
        """Stop taking rows, write the waiting ones for up to `flush_timeout_s`; return how many
        could not be written (their request ids are logged)."""
        with self._cond:
            self._closing = True
            self._flush_deadline = time.monotonic() + flush_timeout_s
            self._cond.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(flush_timeout_s + 5.0)
        with self._cond:
            left = [p.row for p in self._items]
        if left:
            log.error(
                "shutting down with prediction rows that could not be written",
                extra={"lost_rows": len(left), "request_ids": [str(r.request_id) for r in left]},
            )
        return len(left)

    def _next_batch(self) -> list[Pending] | None:
        """The rows at the front of the queue (not removed yet); None: time to stop."""
        with self._cond:
            while not self._items and not self._closing:
                self._cond.wait()
            if not self._items:
                return None
            if self._closing and time.monotonic() >= self._flush_deadline:
                return None
            batch: list[Pending] = []
            size = 0
            for pending in self._items:
                if batch and (
                    len(batch) >= self._batch_rows or size + pending.size > self._batch_bytes
                ):
                    break
                batch.append(pending)
                size += pending.size
            return batch

    def _run(self) -> None:
        backoff = self._backoff_initial_s
        draining_since: float | None = None  # since the database came back, until caught up
        drained = 0
        while (batch := self._next_batch()) is not None:
            attempt_started = time.monotonic()
            try:
                self._store(batch)
            except DatabaseUnavailable as exc:
                self._metrics.db_write_failures.labels(reason="unavailable").inc()
                if not self._failing:
                    log.warning(
                        "database unavailable: queueing prediction rows until it is back",
                        extra={"queued": len(self), "error": str(exc)},
                    )
                self._failing = True
                if self._closing:  # flushing at shutdown: retry often, but do not spin
                    time.sleep(min(backoff, 0.25))
                else:
                    self._wake.wait(backoff)
                backoff = min(backoff * 2.0, self._backoff_max_s)
            except Exception:  # a bug, not the database: keep the rows, keep the thread alive
                log.exception("unexpected error writing prediction rows; retrying")
                self._wake.wait(self._backoff_max_s)
            else:
                if self._failing:
                    log.warning(
                        "database back: writing queued rows",
                        extra={"queued": len(self), "first_batch_rows": len(batch)},
                    )
                    draining_since = attempt_started
                    drained = 0
                self._failing = False
                backoff = self._backoff_initial_s
                if draining_since is not None:
                    drained += len(batch)
                    if len(batch) < self._batch_rows:  # caught up: this batch was not full
                        log.warning(
                            "write backlog drained",
                            extra={
                                "rows_written": drained,
                                "seconds": round(time.monotonic() - draining_since, 3),
                            },
                        )
                        draining_since = None

    def _store(self, batch: list[Pending]) -> None:
        try:
            ids = self._write_batch([p.row for p in batch])
        except RowRejected as exc:
            if len(batch) == 1:
                self._reject(batch[0], exc)
                return
            # One bad row fails its whole batch: write them one by one to find it.
            for pending in batch:
                self._store([pending])
            return
        for pending in batch:
            pending.id = ids.get(pending.row.request_id)
        self._metrics.db_writes.labels(path="batch").inc(len(batch))
        self._metrics.db_write_batch_rows.observe(len(batch))
        self._finish(batch)

    def _reject(self, pending: Pending, exc: RowRejected) -> None:
        # Should never happen (the api builds every row); keep it visible, then move on.
        log.error(
            "the database refused a prediction row; dropping it",
            extra={"row_request_id": str(pending.row.request_id), "error": str(exc)},
        )
        self._metrics.db_write_failures.labels(reason="rejected").inc()
        pending.error = exc
        self._finish([pending])

    def _finish(self, settled: list[Pending]) -> None:
        """Remove settled rows from the front of the queue and wake whoever waits for them."""
        with self._cond:
            for pending in settled:
                # Only this thread removes rows, always the oldest: `settled` is the front.
                front = self._items.popleft()
                assert front is pending
                self._bytes -= pending.size
                pending.settle()
            spooled = [p.row.request_id for p in settled if p.spooled]
        if spooled and self._spool is not None:
            self._spool.remove(spooled)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the request may have stopped waiting (timed out)
        future.set_result(None)


class PredictionStore:
    """Where the api keeps predictions: rows through the group-commit writer, feedback straight
    to PostgreSQL. Built once per process by the lifespan; routes get it as `StoreDep`."""

    def __init__(
        self,
        db: Database,
        *,
        metrics: Metrics,
        max_rows: int,
        wait_s: float = 1.0,
        spool_dir: Path | None = None,
    ) -> None:
        self.db = db
        self.wait_s = wait_s
        self.spool = Spool(spool_dir) if spool_dir is not None else None
        self.writer = GroupCommitWriter(
            lambda rows: insert_predictions(db, rows),
            max_rows=max_rows,
            metrics=metrics,
            spool=self.spool,
        )
        # The pool records how its last attempt went; the gauge only reads it.
        metrics.db_up.set_function(lambda: 1.0 if db.is_up else 0.0)

    async def save(self, row: NewPrediction) -> int | None:
        """The stored row's id, or None when the row is queued (written once PostgreSQL
        answers). Raises QueueFull when it cannot be kept."""
        return await self.writer.save(row, self.wait_s)

    def record_feedback(self, prediction_id: int, true_digit: int) -> Prediction:
        """Raises PredictionNotFound, DatabaseUnavailable."""
        return record_feedback(self.db, prediction_id, true_digit)

    @property
    def queued(self) -> int:
        return len(self.writer)

    def start(self) -> None:
        self.db.warm_up()
        if self.spool is not None:
            for row in self.spool.adopt_orphans():
                try:
                    self.writer.submit(row, spooled=True)
                except QueueFull:
                    # Still on disk in this worker's spool: the next start takes them over.
                    log.error("write queue full while taking over spooled rows")
                    break
        self.writer.start()

    def close(self, flush_timeout_s: float = 5.0) -> int:
        left = self.writer.close(flush_timeout_s)
        if self.spool is not None:
            self.spool.close(keep=left > 0)  # unwritten rows wait on disk for the next start
        self.db.close()
        return left
