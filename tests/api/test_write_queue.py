"""The write queue and the store's direct-or-queued decision, without HTTP."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from digit_predictor.api.metrics import Metrics
from digit_predictor.api.write_queue import PredictionStore, QueueFull, WriteQueue
from digit_predictor.db import Database, DatabaseUnavailable, queries
from digit_predictor.db.queries import NewPrediction
from tests.servers import wait_for


def row(i: int = 0) -> NewPrediction:
    probs = [0.0] * 10
    probs[i % 10] = 1.0
    return NewPrediction(
        predicted_digit=i % 10,
        confidence=1.0,
        probabilities=probs,
        image_data=b"\x89PNG\r\n\x1a\n" + bytes([i % 256]),
        model_version="test",
    )


class FlakyWriter:
    """Fails with `error` while `down` is set; records what it wrote, in order."""

    def __init__(self, error: Exception | None = None) -> None:
        self.down = threading.Event()
        self.error = error or DatabaseUnavailable("connection refused")
        self.written: list[NewPrediction] = []
        self.attempts = 0

    def __call__(self, new: NewPrediction) -> None:
        self.attempts += 1
        if self.down.is_set():
            raise self.error
        self.written.append(new)


def metric(metrics: Metrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


def make_queue(writer: FlakyWriter, maxsize: int = 100) -> tuple[WriteQueue, Metrics]:
    metrics = Metrics()
    queue = WriteQueue(
        writer, maxsize=maxsize, metrics=metrics, backoff_initial_s=0.01, backoff_max_s=0.05
    )
    return queue, metrics


def test_rows_are_written_in_order_once_the_database_is_back() -> None:
    writer = FlakyWriter()
    writer.down.set()
    queue, metrics = make_queue(writer)
    queue.start()
    rows = [row(i) for i in range(20)]
    for r in rows:
        queue.put(r)
    wait_for(lambda: writer.attempts >= 5)  # retrying with backoff while down
    assert writer.written == [] and len(queue) == 20
    assert metric(metrics, "digit_api_db_write_queue_length") == 20
    writer.down.clear()
    wait_for(lambda: len(queue) == 0)
    assert writer.written == rows
    assert metric(metrics, "digit_api_db_writes_total", path="queue") == 20
    assert metric(metrics, "digit_api_db_write_failures_total", reason="unavailable") >= 5
    assert queue.close(1.0) == 0


def test_a_full_queue_refuses_and_counts() -> None:
    writer = FlakyWriter()
    writer.down.set()
    queue, metrics = make_queue(writer, maxsize=2)
    queue.put(row(1))
    queue.put(row(2))
    with pytest.raises(QueueFull):
        queue.put(row(3))
    assert len(queue) == 2
    assert metric(metrics, "digit_api_db_write_queue_full_total") == 1


def test_the_queue_is_bounded_in_bytes_too() -> None:
    writer = FlakyWriter()
    writer.down.set()
    metrics = Metrics()
    size = len(row(1).image_data)
    queue = WriteQueue(writer, maxsize=100, metrics=metrics, max_bytes=2 * size)
    queue.put(row(1))
    queue.put(row(2))
    with pytest.raises(QueueFull, match="bytes"):
        queue.put(row(3))
    assert metric(metrics, "digit_api_db_write_queue_full_total") == 1


def test_a_row_the_database_refuses_is_dropped_visibly_not_retried_forever() -> None:
    writer = FlakyWriter(error=psycopg2.DataError("value out of range"))
    writer.down.set()
    queue, metrics = make_queue(writer)
    queue.start()
    queue.put(row(1))
    wait_for(lambda: len(queue) == 0)
    assert writer.attempts == 1
    assert metric(metrics, "digit_api_db_write_failures_total", reason="rejected") == 1
    queue.close(1.0)


def test_close_flushes_waiting_rows() -> None:
    writer = FlakyWriter()
    writer.down.set()
    queue, _ = make_queue(writer)
    # Long backoff: only close() waking the thread can flush within the test.
    queue._backoff_initial_s = queue._backoff_max_s = 60.0
    queue.start()
    queue.put(row(1))
    wait_for(lambda: writer.attempts >= 1)
    writer.down.clear()
    assert queue.close(5.0) == 0
    assert len(writer.written) == 1


def test_close_gives_up_after_its_timeout_and_reports_what_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    writer = FlakyWriter()
    writer.down.set()
    queue, _ = make_queue(writer)
    queue.start()
    queue.put(row(1))
    queue.put(row(2))
    started = time.monotonic()
    attempts = writer.attempts
    assert queue.close(0.3) == 2
    assert writer.attempts - attempts <= 50  # retried while flushing, without spinning
    assert time.monotonic() - started < 3
    assert any("could not be written" in r.getMessage() for r in caplog.records)
    with pytest.raises(QueueFull):
        queue.put(row(3))


def test_store_writes_directly_when_the_database_answers(db: Database) -> None:
    store = PredictionStore(db, queue_size=10, metrics=Metrics())
    stored = store.save(row(3))
    assert stored is not None and stored.predicted_digit == 3
    assert queries.count_predictions(db) == 1


def test_store_queues_when_the_database_is_unreachable_and_stops_trying_directly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dead = Database("postgresql://nobody@127.0.0.1:1/none", connect_timeout_s=1)
    metrics = Metrics()
    store = PredictionStore(dead, queue_size=10, metrics=metrics, connect_timeout_s=1)
    calls: list[NewPrediction] = []
    original = store.insert

    def counting_insert(new: NewPrediction) -> queries.Prediction:
        calls.append(new)
        return original(new)

    monkeypatch.setattr(store, "insert", counting_insert)
    assert store.save(row(1)) is None
    assert store.save(row(2)) is None  # backlogged: straight to the queue, no second attempt
    assert len(calls) == 1
    assert len(store.queue) == 2
    assert metric(metrics, "digit_api_database_up") == 0
