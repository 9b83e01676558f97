"""Prometheus metrics. One registry per app, so tests can build several apps in one process."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# The `*_created` series double the output and no dashboard here uses them.
disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "digit_api"
# Request latencies on loopback are milliseconds; a slow upload can take seconds.
LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            f"{PREFIX}_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_latency = Histogram(
            f"{PREFIX}_request_duration_seconds",
            "Time from the request's arrival to the end of the response",
            ["route", "method", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_latency = Histogram(
            f"{PREFIX}_inference_duration_seconds",
            "Decoding, preprocessing and running the model for one drawing",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.predictions = Counter(
            f"{PREFIX}_predictions",
            "Predictions answered, by predicted digit",
            ["digit"],
            registry=r,
        )
        for digit in range(10):
            self.predictions.labels(digit=str(digit))
        self.rejected_inputs = Counter(
            f"{PREFIX}_rejected_inputs",
            "Drawings refused as client mistakes, by reason",
            ["reason"],
            registry=r,
        )
        self.model_info = Gauge(
            f"{PREFIX}_model_info",
            "The loaded model (value 1), by version",
            ["version"],
            registry=r,
        )
        self.db_writes = Counter(
            f"{PREFIX}_db_writes",
            "Prediction rows written, by path (batch: the group-commit writer)",
            ["path"],
            registry=r,
        )
        self.db_write_failures = Counter(
            f"{PREFIX}_db_write_failures",
            "Failed attempts to write a prediction row, by reason "
            "(unavailable: retried later; rejected: the database refused the row, dropped)",
            ["reason"],
            registry=r,
        )
        self.queued_writes = Counter(
            f"{PREFIX}_db_writes_queued", "Prediction rows put in the write queue", registry=r
        )
        self.queue_length = Gauge(
            f"{PREFIX}_db_write_queue_length",
            "Prediction rows waiting in the write queue",
            registry=r,
        )
        self.queue_capacity = Gauge(
            f"{PREFIX}_db_write_queue_capacity", "Size of the write queue", registry=r
        )
        self.queue_full = Counter(
            f"{PREFIX}_db_write_queue_full",
            "Predictions refused (503) because the write queue was full",
            registry=r,
        )
        self.db_write_batch_rows = Histogram(
            f"{PREFIX}_db_write_batch_rows",
            "Rows per committed batch of the group-commit writer",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        # Set from the pool's own record of its last attempt (Database.is_up): one owner.
        self.db_up = Gauge(
            f"{PREFIX}_database_up", "1 when the last database call succeeded, else 0", registry=r
        )
        for path in ("batch",):
            self.db_writes.labels(path=path)
        for reason in ("unavailable", "rejected"):
            self.db_write_failures.labels(reason=reason)
