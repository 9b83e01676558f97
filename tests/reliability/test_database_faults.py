"""PostgreSQL going away: restarted under load, or absent when the api starts."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import psycopg2
import pytest

from digit_predictor.db import Database, DatabaseUnavailable, queries
from digit_predictor.db.migrate import migrate
from tests.api import drawings
from tests.pg import PostgresServer, free_port, start_cluster, with_database
from tests.reliability.load import run_load
from tests.reliability.test_load import stored_request_ids
from tests.servers import ApiServer, api_env, api_server, wait_for

pytestmark = pytest.mark.reliability


def test_database_restart_under_load_loses_nothing(
    reliability_api: ApiServer, database_url: str, pg_server: PostgresServer
) -> None:
    pg_server.require_control()
    images = [drawings.drawing_png(digit) for digit in drawings.STROKES]
    # The data layer's own pool (as the web app holds it), busy through the restart too.
    web_pool = Database(database_url, max_size=4, connect_timeout_s=1)
    web_errors_after_restart: list[str] = []
    restarted = threading.Event()
    stop = threading.Event()

    def web_reads() -> None:
        while not stop.is_set():
            try:
                queries.count_predictions(web_pool)
            except DatabaseUnavailable as exc:
                if restarted.is_set():
                    web_errors_after_restart.append(str(exc))
            time.sleep(0.05)

    reader = threading.Thread(target=web_reads)
    reader.start()
    results = []
    loader = threading.Thread(
        target=lambda: results.append(
            run_load(reliability_api.url, images, concurrency=8, stop=stop)
        )
    )
    loader.start()
    try:
        time.sleep(2.0)
        pg_server.restart()  # fast shutdown: every server connection is cut mid-way
        restarted.set()
        time.sleep(3.0)
    finally:
        stop.set()
        loader.join()
        reader.join()
    result = results[0]

    statuses = result.statuses()
    print(f"\nload through a PostgreSQL restart: {statuses} in {result.seconds:.1f} s")
    assert result.errors() == []
    assert set(statuses) <= {201, 202}, statuses  # answered, stored now or queued
    assert statuses.get(201, 0) > 50

    # Once the database is back, every answered prediction is a row, exactly once.
    answered = sorted(str(o.body["request_id"]) for o in result.outcomes if o.body)
    wait_for(lambda: len(stored_request_ids(database_url)) >= len(answered))
    assert sorted(stored_request_ids(database_url)) == answered

    # Both pools recovered by themselves: nothing was restarted but PostgreSQL.
    with reliability_api.client() as client:
        wait_for(lambda: client.get("/readyz").status_code == 200)
        assert client.get("/readyz").json()["queued_writes"] == 0
        post = client.post("/v1/predictions", files={"image": ("d.png", images[0], "image/png")})
        assert post.status_code == 201, post.text
    assert queries.count_predictions(web_pool) == len(answered) + 1
    # The web pool saw at most the moments of the restart itself fail, then recovered.
    web_pool.ping()
    web_pool.close()
    assert len(web_errors_after_restart) <= 5, web_errors_after_restart
    assert not [r for r in reliability_api.log_records() if r.get("status", 0) >= 500]


def test_database_down_at_start_up(reliability_model: Path) -> None:
    port = free_port()
    # Nothing listens on `port` yet: the api must start anyway.
    url = f"postgresql://digits@127.0.0.1:{port}/digits"
    env = api_env(url, reliability_model, db_connect_timeout_s=1)
    with api_server(env) as api, api.client() as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["model_loaded"] is True
        assert any("database unavailable" in reason for reason in ready.json()["reasons"])
        assert client.get("/healthz").status_code == 200
        early = client.post(
            "/v1/predictions", files={"image": ("d.png", drawings.drawing_png(7), "image/png")}
        )
        assert early.status_code == 202, early.text  # answered, queued for later

        cluster = start_cluster(port)
        try:
            # No restart, no manual migration: the api notices, migrates and catches up.
            wait_for(lambda: client.get("/readyz").status_code == 200, timeout_s=60)
            wait_for(lambda: client.get("/readyz").json()["queued_writes"] == 0)
            late = client.post(
                "/v1/predictions", files={"image": ("d.png", drawings.drawing_png(1), "image/png")}
            )
            assert late.status_code == 201, late.text
            stored = stored_request_ids(with_database(cluster.admin_url, "digits"))
            assert sorted(stored) == sorted([early.json()["request_id"], late.json()["request_id"]])
            assert migrate(with_database(cluster.admin_url, "digits")) == []
        finally:
            api.stop()
            cluster.destroy()


def test_an_unreachable_database_does_not_slow_every_request(reliability_model: Path) -> None:
    # After the first failed write, rows are queued at once instead of each paying a timeout.
    env = api_env(f"postgresql://digits@127.0.0.1:{free_port()}/digits", reliability_model)
    png = drawings.drawing_png(4)
    with api_server(env) as api, api.client() as client:
        client.post("/v1/predictions", files={"image": ("d.png", png, "image/png")})
        started = time.monotonic()
        for _ in range(20):
            response = client.post("/v1/predictions", files={"image": ("d.png", png, "image/png")})
            assert response.status_code == 202
        assert time.monotonic() - started < 5.0
    with pytest.raises(psycopg2.OperationalError):
        psycopg2.connect(env["DATABASE_URL"], connect_timeout=1)
