"""The group-commit writer and the store, without HTTP."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from digit_predictor.api.metrics import Metrics
from digit_predictor.api.spool import Spool
from digit_predictor.api.writer import GroupCommitWriter, PredictionStore, QueueFull
from digit_predictor.db import Database, DatabaseUnavailable, RowRejected, queries
from digit_predictor.db.queries import NewPrediction
from tests.servers import wait_for


def row(i: int = 0, *, size: int = 1) -> NewPrediction:
    probs = [0.0] * 10
    probs[i % 10] = 1.0
    return NewPrediction(
        predicted_digit=i % 10,
        confidence=1.0,
        probabilities=probs,
        image_data=b"\x89PNG\r\n\x1a\n" + bytes([i % 256]) * size,
        model_version="test",
    )


class FlakyDatabase:
    """A `write_batch` that fails while `down` is set; records the batches it stored."""

    def __init__(self, error: Exception | None = None) -> None:
        self.down = threading.Event()
        self.error = error or DatabaseUnavailable("connection refused")
        self.batches: list[list[NewPrediction]] = []
        self.attempts = 0
        self.reject: set[uuid.UUID] = set()
        self.delay_s = 0.0

    @property
    def written(self) -> list[NewPrediction]:
        return [r for batch in self.batches for r in batch]

    def __call__(self, rows: Sequence[NewPrediction]) -> Mapping[uuid.UUID, int]:
        self.attempts += 1
        time.sleep(self.delay_s)
        if self.down.is_set():
            raise self.error
        if self.reject & {r.request_id for r in rows}:
            raise RowRejected("new row violates check constraint")
        start = len(self.written)
        self.batches.append(list(rows))
        return {r.request_id: start + i + 1 for i, r in enumerate(rows)}


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def make_writer(
    db: FlakyDatabase,
    max_rows: int = 1000,
    *,
    batch_rows: int = 500,
    batch_bytes: int = 4 * 1024 * 1024,
    backoff_initial_s: float = 0.01,
    backoff_max_s: float = 0.05,
    spool: Spool | None = None,
) -> GroupCommitWriter:
    return GroupCommitWriter(
        db,
        max_rows=max_rows,
        metrics=Metrics(),
        batch_rows=batch_rows,
        batch_bytes=batch_bytes,
        backoff_initial_s=backoff_initial_s,
        backoff_max_s=backoff_max_s,
        spool=spool,
    )


def save(writer: GroupCommitWriter, r: NewPrediction, wait_s: float) -> int | None:
    """One request's save, on an event loop of its own (as the api awaits it)."""
    return asyncio.run(writer.save(r, wait_s))


def test_a_request_gets_its_own_id_when_the_database_answers() -> None:
    db = FlakyDatabase()
    writer = make_writer(db)
    writer.start()
    rows = [row(i) for i in range(3)]
    ids = [save(writer, r, wait_s=5.0) for r in rows]
    assert ids == [1, 2, 3]
    assert db.written == rows
    assert writer.close(1.0) == 0


def test_while_the_database_is_away_rows_queue_and_answers_do_not_wait() -> None:
    db = FlakyDatabase()
    db.down.set()
    writer = make_writer(db)
    writer.start()
    assert save(writer, row(0), wait_s=0.2) is None  # waited once, then it is known to be down
    wait_for(lambda: db.attempts >= 2)
    started = time.monotonic()
    rows = [row(i) for i in range(1, 20)]
    assert [save(writer, r, wait_s=0.2) for r in rows] == [None] * 19
    assert time.monotonic() - started < 0.2  # no 200 ms wait each while the database is down
    assert db.written == [] and len(writer) == 20
    db.down.clear()
    wait_for(lambda: len(writer) == 0)
    assert [r.request_id for r in db.written[1:]] == [r.request_id for r in rows]  # in order
    assert len(db.batches) <= 2  # the backlog goes in one large batch, not row by row
    assert writer.close(1.0) == 0


def test_requests_on_the_event_loop_wait_for_their_commit_without_a_thread() -> None:
    db = FlakyDatabase()
    db.delay_s = 0.02
    writer = make_writer(db)
    writer.start()
    rows = [row(i) for i in range(64)]
    threads_before = threading.active_count()

    async def send_all() -> list[int | None]:
        waits = [asyncio.ensure_future(writer.save(r, wait_s=10.0)) for r in rows]
        await asyncio.sleep(0.01)
        # 64 requests waiting for their commit, and not one thread more for them.
        assert threading.active_count() == threads_before
        return await asyncio.gather(*waits)

    ids = asyncio.run(send_all())
    by_request = {r.request_id: i + 1 for i, r in enumerate(db.written)}
    assert ids == [by_request[r.request_id] for r in rows]  # each gets its own row's id
    assert len(db.batches) < 32, f"{len(db.batches)} commits for 64 rows: no grouping"
    assert writer.close(1.0) == 0


def test_on_the_event_loop_a_slow_database_answers_queued_and_spools_and_loses_nothing(
    tmp_path: Path,
) -> None:
    db = FlakyDatabase()
    db.delay_s = 0.5  # slower than the wait: the answer goes out first (202)
    spool = Spool(tmp_path)
    writer = make_writer(db, spool=spool)
    writer.start()
    first, second = row(1), row(2)

    async def send() -> list[int | None]:
        started = time.monotonic()
        answers = [await writer.save(r, wait_s=0.1) for r in (first, second)]
        assert time.monotonic() - started < 0.5
        return answers

    # The loop is closed when the commits finally land: the writer must not mind.
    assert asyncio.run(send()) == [None, None]
    assert len(spool) >= 1  # on disk before the answer went out
    wait_for(lambda: len(writer) == 0)
    assert [r.request_id for r in db.written] == [first.request_id, second.request_id]
    assert len(spool) == 0
    writer.close(1.0)
    spool.close(keep=False)


def test_on_the_event_loop_a_refused_row_raises() -> None:
    db = FlakyDatabase()
    writer = make_writer(db)
    writer.start()
    bad = row(9)
    db.reject = {bad.request_id}
    with pytest.raises(RowRejected):
        asyncio.run(writer.save(bad, wait_s=5.0))
    assert asyncio.run(writer.save(row(1), wait_s=5.0)) == 1  # the writer carries on
    writer.close(1.0)


def test_a_full_queue_refuses_and_counts() -> None:
    db = FlakyDatabase()
    db.down.set()
    writer = make_writer(db, max_rows=2)
    writer.submit(row(1))
    writer.submit(row(2))
    with pytest.raises(QueueFull):
        writer.submit(row(3))
    assert len(writer) == 2
    assert metric(writer._metrics, "digit_api_db_write_queue_full_total") == 1


def test_the_queue_is_bounded_in_bytes_too() -> None:
    db = FlakyDatabase()
    size = len(row(1).image_data)
    writer = GroupCommitWriter(db, max_rows=100, metrics=Metrics(), max_bytes=2 * size)
    writer.submit(row(1))
    writer.submit(row(2))
    with pytest.raises(QueueFull, match="bytes"):
        writer.submit(row(3))


def test_batches_are_bounded_in_rows_and_bytes() -> None:
    db = FlakyDatabase()
    db.down.set()
    writer = make_writer(db, batch_rows=5, batch_bytes=10_000)
    for i in range(12):
        writer.submit(row(i))
    for i in range(3):
        writer.submit(row(i, size=4000))
    writer.start()
    db.down.clear()
    wait_for(lambda: len(writer) == 0)
    # 5 and 5 rows; then 2 small and 2 large rows (8 kB); the last large one is over 10 kB
    assert [len(b) for b in db.batches] == [5, 5, 4, 1]
    writer.close(1.0)


def test_a_row_the_database_refuses_is_dropped_visibly_and_the_others_are_stored() -> None:
    db = FlakyDatabase()
    db.down.set()
    writer = make_writer(db)
    rows = [row(i) for i in range(5)]
    db.reject = {rows[2].request_id}
    pendings = [writer.submit(r) for r in rows]
    writer.start()
    db.down.clear()
    wait_for(lambda: len(writer) == 0)
    assert [r.request_id for r in db.written] == [
        r.request_id for i, r in enumerate(rows) if i != 2
    ]
    assert isinstance(pendings[2].error, RowRejected)
    assert metric(writer._metrics, "digit_api_db_write_failures_total", reason="rejected") == 1
    with pytest.raises(RowRejected):
        bad = row(9)
        db.reject = {bad.request_id}
        save(writer, bad, wait_s=5.0)
    writer.close(1.0)


def test_close_flushes_waiting_rows() -> None:
    db = FlakyDatabase()
    db.down.set()
    # Long backoff: only close() waking the thread can flush within the test.
    writer = make_writer(db, backoff_initial_s=60.0, backoff_max_s=60.0)
    writer.start()
    writer.submit(row(1))
    wait_for(lambda: db.attempts >= 1)
    db.down.clear()
    assert writer.close(5.0) == 0
    assert len(db.written) == 1


def test_close_gives_up_after_its_timeout_and_reports_what_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    db = FlakyDatabase()
    db.down.set()
    writer = make_writer(db)
    writer.start()
    writer.submit(row(1))
    writer.submit(row(2))
    started = time.monotonic()
    attempts = db.attempts
    assert writer.close(0.3) == 2
    assert db.attempts - attempts <= 50  # retried while flushing, without spinning
    assert time.monotonic() - started < 3
    assert any("could not be written" in r.getMessage() for r in caplog.records)
    with pytest.raises(QueueFull):
        writer.submit(row(3))


def test_store_writes_batches_to_postgresql_once_per_request_id(db: Database) -> None:
    store = PredictionStore(db, metrics=Metrics(), max_rows=10, wait_s=5.0)
    store.start()
    new = row(3)
    row_id = asyncio.run(store.save(new))
    assert row_id is not None
    assert queries.get_prediction(db, row_id).predicted_digit == 3
    # The same request_id again (a retry after an ambiguous commit): the same row, not another.
    assert queries.insert_predictions(db, [new, row(4)])[new.request_id] == row_id
    assert queries.count_predictions(db) == 2
    assert store.close(1.0) == 0


def test_store_queues_when_the_database_is_unreachable() -> None:
    dead = Database("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=1)
    metrics = Metrics()
    store = PredictionStore(dead, metrics=metrics, max_rows=10, wait_s=0.5)
    store.start()
    assert asyncio.run(store.save(row(1))) is None
    assert asyncio.run(store.save(row(2))) is None
    assert store.queued == 2
    assert metric(metrics, "digit_api_database_up") == 0
    assert store.close(0.2) == 2


def test_rows_answered_202_wait_on_disk_and_leave_it_once_written(tmp_path: Path) -> None:
    db = FlakyDatabase()
    db.down.set()
    spool = Spool(tmp_path)
    writer = make_writer(db, spool=spool)
    writer.start()
    rows = [row(i) for i in range(5)]
    assert [save(writer, r, wait_s=0.2) for r in rows] == [None] * 5
    assert len(spool) == 5
    db.down.clear()
    wait_for(lambda: len(writer) == 0)
    assert len(spool) == 0  # written: gone from disk
    assert writer.close(1.0) == 0
    spool.close(keep=False)
    assert list(tmp_path.glob("spool-*")) == []


def test_a_new_worker_takes_over_the_spool_of_one_that_died(tmp_path: Path) -> None:
    dead = Spool(tmp_path)
    rows = [row(i) for i in range(3)]
    for r in rows:
        dead.add(r)
    # Only the live owner's lock keeps others out; a second worker must leave it alone.
    alive = Spool(tmp_path)
    assert alive.adopt_orphans() == []
    os.close(dead._lock_fd)  # the owner dies (the kernel drops its lock), file left behind
    taken = alive.adopt_orphans()
    assert [r.request_id for r in taken] == [r.request_id for r in rows]
    assert taken[0] == rows[0]  # every field, image and time included
    assert not dead.path.exists()
    assert len(alive) == 3  # on disk again, in the new owner's spool
    alive.close(keep=False)
