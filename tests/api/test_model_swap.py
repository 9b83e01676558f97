"""The api serves the registry's champion and swaps it live: after a promotion or a rollback it
answers with the new version within 10 s, with no restart and no failed request."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch

from digit_predictor.db import Database, registry
from digit_predictor.ml.export import onnx_graph
from digit_predictor.ml.models import DEFAULT_ARCHITECTURE, build_model
from digit_predictor.ml.serving import ServingClassifier
from tests.api import drawings
from tests.pg import PostgresServer
from tests.servers import ApiServer, api_env, api_server, wait_for

pytestmark = pytest.mark.slow

SWAP_DEADLINE_S = 10.0
SHIPPED = "test-model-1"  # make_test_model's version


def _challenger(db: Database, version: str, seed: int, *, with_graph: bool = True) -> None:
    """Register seeded weights; with their ONNX graph, as retraining does, or without (a version
    registered before graphs were stored: the api must export it itself)."""
    torch.manual_seed(seed)
    model = build_model(DEFAULT_ARCHITECTURE).eval()
    out = io.BytesIO()
    torch.save(model.state_dict(), out)
    registry.register(
        db,
        version=version,
        parent_version=SHIPPED,
        arch=DEFAULT_ARCHITECTURE,
        weights=out.getvalue(),
        card={"version": version, "gate": {"passed": True, "rows": []}},
        onnx=onnx_graph(model) if with_graph else None,
    )


def _predict(client: httpx.Client) -> httpx.Response:
    png = drawings.drawing_png(7)
    return client.post("/v1/predictions", files={"image": ("d.png", png, "image/png")})


def _serving(client: httpx.Client) -> str:
    """The version that answers a prediction now (stored at once or queued)."""
    response = _predict(client)
    assert response.status_code in (201, 202), response.text
    return str(response.json()["model_version"])


class Load:
    """Predictions sent without pause from a thread; every answer is kept."""

    def __init__(self, api: ApiServer) -> None:
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(api,), daemon=True)

    def _run(self, api: ApiServer) -> None:
        with api.client() as client:
            while not self._stop.is_set():
                response = _predict(client)
                body = response.json()
                self.answers.append((response.status_code, str(body.get("model_version"))))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


@pytest.fixture
def own_db(own_database_url: str) -> Iterator[Database]:
    database = Database(own_database_url, max_size=2)
    yield database
    database.close()


def test_promotion_and_rollback_reach_the_running_api(
    own_database_url: str, own_db: Database, model_path: Path
) -> None:
    # A long periodic check: the NOTIFY, not the poll, must bring the new champion in time.
    env = api_env(own_database_url, model_path, model_check_interval_s=60)
    with api_server(env, ready_path="/readyz") as api, api.client() as client:
        assert _serving(client) == SHIPPED
        assert registry.champion(own_db) is not None
        _challenger(own_db, "challenger-1", seed=1)

        with Load(api) as load:
            time.sleep(0.5)
            registry.promote(own_db, "challenger-1", reason="gate passed")
            promoted_at = time.monotonic()
            wait_for(lambda: _serving(client) == "challenger-1", timeout_s=SWAP_DEADLINE_S)
            swap_s = time.monotonic() - promoted_at
            time.sleep(0.5)
        assert swap_s < SWAP_DEADLINE_S
        statuses = {status for status, _ in load.answers}
        assert statuses == {201}, statuses  # no failed request during the swap
        versions = [version for _, version in load.answers]
        assert set(versions) == {SHIPPED, "challenger-1"}
        # One process: once the new model answers, the old one never does again.
        first_new = versions.index("challenger-1")
        assert all(v == "challenger-1" for v in versions[first_new:])

        # The stored rows say which version answered each of them.
        with own_db.connection() as conn, conn.cursor() as cur:
            cur.execute("SELECT model_version, count(*) FROM predictions GROUP BY 1")
            stored = dict(cur.fetchall())
        assert set(stored) == {SHIPPED, "challenger-1"}

        listed = client.get("/v1/models").json()
        assert {m["version"]: m["status"] for m in listed} == {
            "challenger-1": "champion",
            SHIPPED: "retired",
        }
        champion = client.get("/v1/models/champion").json()
        assert champion["version"] == "challenger-1"
        assert champion["gate"] == {"passed": True, "rows": []}
        assert client.get("/v1/model").json()["version"] == "challenger-1"
        assert client.get("/readyz").json()["model_version"] == "challenger-1"

        registry.rollback(own_db, reason="test")
        wait_for(lambda: _serving(client) == SHIPPED, timeout_s=SWAP_DEADLINE_S)
        metrics = client.get("/metrics").text
        assert f'digit_api_model_info{{version="{SHIPPED}"}} 1.0' in metrics
        assert 'digit_api_model_info{version="challenger-1"} 0.0' in metrics


def test_the_periodic_check_catches_a_champion_without_notify_or_graph(
    own_database_url: str, own_db: Database, model_path: Path
) -> None:
    env = api_env(own_database_url, model_path, model_check_interval_s=1)
    with api_server(env, ready_path="/readyz") as api, api.client() as client:
        assert _serving(client) == SHIPPED
        # Registered without its ONNX graph, like a version from before graphs were stored.
        _challenger(own_db, "quiet-1", seed=2, with_graph=False)
        # A promotion made by hand in SQL, which sends no NOTIFY.
        with own_db.connection() as conn, conn.cursor() as cur:
            cur.execute("UPDATE models SET status = 'retired' WHERE status = 'champion'")
            cur.execute(
                "UPDATE models SET status = 'champion', promoted_at = now() "
                "WHERE version = 'quiet-1'"
            )
        wait_for(lambda: _serving(client) == "quiet-1", timeout_s=SWAP_DEADLINE_S)
    # The api exported the graph (in a child process) and kept it for every other process.
    graph = registry.load_graph(own_db, "quiet-1")
    assert graph is not None
    ServingClassifier(graph, {"version": "quiet-1"}, arch=DEFAULT_ARCHITECTURE, weights=b"")


def test_a_champion_that_cannot_load_leaves_the_current_model_serving(
    own_database_url: str, own_db: Database, model_path: Path
) -> None:
    env = api_env(own_database_url, model_path, model_check_interval_s=1)
    with api_server(env, ready_path="/readyz") as api, api.client() as client:
        registry.register(
            own_db,
            version="broken-1",
            parent_version=SHIPPED,
            arch=DEFAULT_ARCHITECTURE,
            weights=b"not a state dict",
            card={},
        )
        registry.promote(own_db, "broken-1", reason="test")
        wait_for(lambda: "cannot serve the champion" in api.logs(), timeout_s=SWAP_DEADLINE_S)
        assert _serving(client) == SHIPPED
        # A stored graph that no longer matches its sha256 is refused the same way.
        _challenger(own_db, "tampered-1", seed=4)
        with own_db.connection() as conn, conn.cursor() as cur:
            cur.execute("UPDATE models SET onnx = 'tampered' WHERE version = 'tampered-1'")
        registry.promote(own_db, "tampered-1", reason="test")
        wait_for(lambda: "does not match its sha256" in api.logs(), timeout_s=SWAP_DEADLINE_S)
        assert _serving(client) == SHIPPED


def test_without_the_database_at_start_it_serves_the_file_then_the_champion(
    own_database_url: str, own_db: Database, model_path: Path, pg_server: PostgresServer
) -> None:
    if pg_server.data_dir is None:
        pytest.skip("needs the throwaway cluster (TEST_DATABASE_URL is not ours to stop)")
    registry.register_shipped(own_db, model_path)
    _challenger(own_db, "waiting-1", seed=3)
    registry.promote(own_db, "waiting-1", reason="promoted while the api was down")
    own_db.close()
    env = api_env(own_database_url, model_path, model_check_interval_s=1)
    pg_server.stop()
    running = False
    try:
        with api_server(env) as api, api.client() as client:
            down = _predict(client)
            assert down.status_code == 202  # queued; answered by the shipped file
            assert down.json()["model_version"] == SHIPPED
            pg_server.start()
            running = True
            wait_for(lambda: _serving(client) == "waiting-1", timeout_s=SWAP_DEADLINE_S + 5)
    finally:
        if not running:
            pg_server.start()
