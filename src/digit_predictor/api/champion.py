"""Keep the api serving the model registry's champion, with no restart and no failed request.

At start the api serves the shipped weights file; as soon as the registry answers, the champion
replaces it (the shipped weights are registered as the first champion when there is none). A
promotion or rollback arrives as a PostgreSQL NOTIFY; a periodic check covers a lost
notification or a dropped listener connection. A new champion is loaded and warmed in this
thread, then swapped in with one reference assignment (see Predictor.swap). The api serves a
version's ONNX graph from the registry; a version registered without one (before graphs were
stored) is exported here by a child process, once, and its graph stored for everyone else.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from digit_predictor.api.metrics import Metrics
from digit_predictor.api.predictor import Predictor
from digit_predictor.db import Database, DatabaseUnavailable, registry
from digit_predictor.ml.serving import ModelLoadError, ServingClassifier

log = logging.getLogger(__name__)


class ChampionWatcher:
    def __init__(
        self,
        predictor: Predictor,
        db: Database,
        *,
        metrics: Metrics,
        shipped_weights: Path,
        check_interval_s: float,
        connect_timeout_s: int = 3,
        threads: int = 1,
    ) -> None:
        self._predictor = predictor
        self._db = db
        self._metrics = metrics
        self._shipped = shipped_weights
        self._interval = check_interval_s
        self._threads = threads
        self._listener = registry.ChampionListener(db.dsn, connect_timeout_s=connect_timeout_s)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._shipped_registered = False
        self._refused: set[str] = set()  # versions that failed to load: not retried every tick

    def sync(self) -> bool:
        """Serve the registry's champion now; False when the registry cannot be read."""
        try:
            if not self._shipped_registered:
                registry.register_shipped(self._db, self._shipped)
                self._shipped_registered = True
            record = registry.champion(self._db)
            if record is None or record.version == self._predictor.version:
                return True
            if record.version in self._refused:
                return True
            try:
                weights = registry.load_weights(self._db, record.version)
                graph = registry.load_graph(self._db, record.version)
            except registry.RegistryError as exc:  # stored bytes that fail their sha256
                self._refused.add(record.version)
                log.error("cannot serve the champion", extra={"error": str(exc)})
                return True
        except DatabaseUnavailable as exc:
            log.info("model registry not reachable", extra={"error": str(exc)})
            return False
        card = {**record.card, "version": record.version, "architecture": record.arch}
        try:
            classifier = ServingClassifier.from_weights(
                record.arch, weights, card, graph, threads=self._threads
            )
            classifier.warm_up()
        except ModelLoadError as exc:
            # Keep serving the current model rather than fail requests over a bad version.
            self._refused.add(record.version)
            log.error("cannot serve the champion", extra={"error": str(exc)})
            return True
        if graph is None:  # a version from before graphs were stored: keep the one just made
            self._store_graph(record.version, classifier)
        previous = self._predictor.swap(classifier)
        self._metrics.model_info.labels(version=previous.version).set(0)
        self._metrics.model_info.labels(version=classifier.version).set(1)
        log.info(
            "now serving the champion",
            extra={"model_version": classifier.version, "previous_version": previous.version},
        )
        return True

    def _store_graph(self, version: str, classifier: ServingClassifier) -> None:
        try:
            registry.store_graph(self._db, version, classifier.graph)
        except DatabaseUnavailable as exc:  # the next process to serve it exports it again
            log.info("could not store the exported graph", extra={"error": str(exc)})

    def start(self) -> None:
        """First sync now (so a reachable registry's champion serves the first request), then
        watch in a daemon thread."""
        self.sync()
        self._thread = threading.Thread(target=self._run, name="champion-watcher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                # Returns on a notification or after the interval: either way, check.
                self._listener.wait(self._interval)
            except DatabaseUnavailable:
                if self._stop.wait(self._interval):
                    break
            if not self._stop.is_set():
                self.sync()
        self._listener.close()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
