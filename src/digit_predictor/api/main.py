"""The app, one per worker process (started by `python -m digit_predictor.api`).

The lifespan loads and warms the model once, prepares the database (migrations, pool, the
group-commit writer) without requiring it to be up, and on shutdown flushes queued rows.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio.to_thread
from fastapi import FastAPI, Security

from digit_predictor.api import errors, workers
from digit_predictor.api.champion import ChampionWatcher
from digit_predictor.api.compute import Compute
from digit_predictor.api.deps import Services
from digit_predictor.api.limits import MULTIPART_OVERHEAD_BYTES, UploadLimitMiddleware
from digit_predictor.api.logs import RequestLogMiddleware, configure_logging
from digit_predictor.api.metrics import Metrics
from digit_predictor.api.predictor import Predictor
from digit_predictor.api.routes import explanations, health, models, predictions, previews, stats
from digit_predictor.api.security import require_api_key
from digit_predictor.api.shutdown import Drain, delay_sigterm
from digit_predictor.api.writer import PredictionStore
from digit_predictor.config import Settings, get_settings
from digit_predictor.db import Database, DatabaseUnavailable
from digit_predictor.db.migrate import migrate
from digit_predictor.ml.serving import ServingClassifier

log = logging.getLogger(__name__)

DESCRIPTION = """\
Draw a digit, get the CNN's answer. Every prediction is stored in PostgreSQL with the drawing.

* Errors always answer JSON `{"detail": "..."}` saying what to fix.
* When the database is unavailable, `POST /v1/predictions` still answers, with **202** and
  `id: null`: the row is queued and written once the database is back.
* When the api runs with `API_KEY` set, every `/v1` call needs it in the `X-API-Key` header.
"""

FLUSH_TIMEOUT_S = 5.0


def inference_threads() -> int:
    """One intra-op thread per model call unless OMP_NUM_THREADS says otherwise.

    Concurrency comes from the worker processes; intra-op threads on top oversubscribe the
    cores and spin between requests (measured: see docs/api.md).
    """
    return int(os.environ.get("OMP_NUM_THREADS") or 1)


def build_services(settings: Settings, metrics: Metrics) -> Services:
    """Blocking start-up work (run in a worker thread by the lifespan)."""
    threads = inference_threads()
    classifier = ServingClassifier.load(settings.model_path, threads=threads)
    classifier.warm_up()
    metrics.model_info.labels(version=classifier.version).set(1)
    log.info(
        "model loaded",
        extra={
            "model_path": str(settings.model_path),
            "model_version": classifier.version,
            "inference_threads": threads,
        },
    )
    db = Database.from_settings(settings)
    store = PredictionStore(
        db,
        metrics=metrics,
        max_rows=settings.write_queue_size,
        wait_s=settings.write_wait_ms / 1000.0,
        spool_dir=settings.write_spool_dir,
    )
    start_migrations(settings)
    store.start()
    predictor = Predictor(classifier, max_side=settings.max_image_side)
    # Serves the shipped file until the registry answers, then the registry's champion.
    champion = ChampionWatcher(
        predictor,
        db,
        metrics=metrics,
        shipped_weights=settings.model_path,
        check_interval_s=settings.model_check_interval_s,
        connect_timeout_s=settings.db_connect_timeout_s,
        threads=threads,
    )
    champion.start()
    return Services(
        compute=Compute(settings.api_compute_threads),
        settings=settings,
        metrics=metrics,
        predictor=predictor,
        champion=champion,
        db=db,
        store=store,
    )


MIGRATE_RETRY_S = 1.0


def start_migrations(settings: Settings) -> None:
    """Apply pending migrations now if PostgreSQL answers, else keep trying in the background.

    Never on the insert path: until the schema is there, inserts fail like an unreachable
    database does, so rows wait in the writer's queue. Every worker may try; an advisory lock
    inside `migrate` makes the second one find nothing to do.
    """

    def attempt() -> bool:
        try:
            applied = migrate(settings.dsn, connect_timeout_s=settings.db_connect_timeout_s)
        except DatabaseUnavailable as exc:
            log.info("migrations not applied yet: database unavailable", extra={"error": str(exc)})
            return False
        if applied:
            log.info("applied migrations", extra={"versions": applied})
        return True

    if attempt():
        return
    log.warning("database not reachable at start-up; serving anyway, rows will be queued")

    def keep_trying() -> None:
        while not attempt():
            time.sleep(MIGRATE_RETRY_S)

    threading.Thread(target=keep_trying, name="migrate-at-start", daemon=True).start()


def freeze_startup_objects() -> None:
    """Move everything made so far (modules, the app, the model's session, the pool) out of the
    cyclic garbage collector's sight: they live as long as the worker, and each full collection
    walked all of them, stalling the worker's requests (measured under load at c=32: 45-125 ms
    every 8 s or so per worker; none over 2 ms after). Objects made later (a model loaded by a
    promotion, torch on a first explanation) are collected as usual."""
    gc.collect()
    gc.freeze()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    configure_logging(debug=settings.debug)
    services = await anyio.to_thread.run_sync(build_services, settings, app.state.metrics)
    app.state.services = services
    await anyio.to_thread.run_sync(freeze_startup_objects)  # a full collection: not on the loop
    log.info("api ready to serve", extra={"api_key_required": bool(settings.api_key)})
    undo_drain = delay_sigterm(app.state.drain, settings.shutdown_drain_s)
    try:
        yield
    finally:
        undo_drain()
        services.champion.stop()
        await anyio.to_thread.run_sync(services.store.close, FLUSH_TIMEOUT_S)
        log.info("api stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="Digit Predictor API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        debug=settings.debug,
        # Only the drawing and `source`: anything more is a mistake or an attack.
        form_limits={"max_files": 1, "max_fields": 4},
    )
    app.state.settings = settings
    app.state.metrics = metrics = Metrics()
    app.state.drain = Drain()

    # The key, when set, guards every /v1 route; the schema declares it only then.
    key = settings.api_key
    guard = [Security(require_api_key(key))] if key else []
    unauthorised = errors.error_responses(401) if key else {}
    routers = (
        predictions.upload_router,
        predictions.feedback_router,
        predictions.router,
        stats.router,
        explanations.router,
        previews.router,
        models.router,
    )
    for router in routers:
        app.include_router(router, dependencies=guard, responses=unauthorised)
    app.include_router(health.router)
    errors.install(app)

    # Outermost last: the request log sees every answer, the upload limits' refusals included.
    app.add_middleware(
        UploadLimitMiddleware,
        max_body_bytes=settings.max_upload_bytes + MULTIPART_OVERHEAD_BYTES,
        read_timeout_s=settings.request_timeout_s,
    )
    balance = workers.connection_balance()  # several workers: keep their connections even
    if balance is not None:
        app.add_middleware(workers.ConnectionBalanceMiddleware, balance=balance)
    app.add_middleware(RequestLogMiddleware, metrics=metrics)
    return app
