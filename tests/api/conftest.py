"""Fixtures for the api tests: an untrained model, real uvicorn servers on a real PostgreSQL,
and an in-process layer (`TestClient` + `dependency_overrides`) for fast route tests.

The in-process app is the real `create_app`, with its services built by the real
`build_services` on the same test PostgreSQL; only *how* routes find them changes: the
`get_services` dependency is overridden instead of running the lifespan, so a test can hand
the routes other services (a database that is down, say) without starting a process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from fastapi.testclient import TestClient

from digit_predictor.api.deps import Services, get_services
from digit_predictor.api.main import build_services, create_app
from digit_predictor.api.metrics import Metrics
from digit_predictor.config import Settings
from tests.servers import ApiServer, api_env, free_port, make_test_model, start_api

API_KEY = "test-key-5f0c2d"


@pytest.fixture(scope="session")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="session")
def api_server(migrated_database_url: str, model_path: Path) -> Iterator[ApiServer]:
    """One api for the contract tests; `api` empties the tables before each test."""
    server = start_api(api_env(migrated_database_url, model_path))
    yield server
    server.cleanup()


@pytest.fixture
def api(api_server: ApiServer, database_url: str) -> ApiServer:
    assert api_server.is_running(), api_server.logs()[-3000:]
    return api_server


@pytest.fixture
def client(api: ApiServer) -> Iterator[httpx.Client]:
    with api.client() as http:
        yield http


@pytest.fixture(scope="session")
def keyed_api_server(migrated_database_url: str, model_path: Path) -> Iterator[ApiServer]:
    """An api that requires X-API-Key on /v1 (for the auth and schemathesis tests)."""
    server = start_api(api_env(migrated_database_url, model_path, api_key=API_KEY))
    yield server
    server.cleanup()


@pytest.fixture
def keyed_api(keyed_api_server: ApiServer, database_url: str) -> ApiServer:
    assert keyed_api_server.is_running(), keyed_api_server.logs()[-3000:]
    return keyed_api_server


SMALL_QUEUE = 3
READ_TIMEOUT_S = 1.0


@pytest.fixture(scope="session")
def small_api_server(migrated_database_url: str, model_path: Path) -> Iterator[ApiServer]:
    """An api with a 3-row write queue and a 1 s body deadline."""
    env = api_env(
        migrated_database_url,
        model_path,
        write_queue_size=SMALL_QUEUE,
        request_timeout_s=READ_TIMEOUT_S,
    )
    server = start_api(env)
    yield server
    server.cleanup()


@pytest.fixture
def small_api(small_api_server: ApiServer, database_url: str) -> ApiServer:
    assert small_api_server.is_running(), small_api_server.logs()[-3000:]
    return small_api_server


# ---- In-process: the app object under TestClient, services given by dependency_overrides ----

MakeServices = Callable[..., Services]
MakeClient = Callable[..., TestClient]


def in_process_settings(database_url: str, model_path: Path, **settings: Any) -> Settings:
    """Settings from arguments only: no `.env`; explicit values win over the environment."""
    fields: dict[str, Any] = {"database_url": database_url, "model_path": model_path}
    fields.update(settings)
    return Settings(_env_file=None, **fields)  # type: ignore[call-arg]


@pytest.fixture(scope="session")
def make_services(model_path: Path) -> Iterator[MakeServices]:
    """`make_services(database_url, **settings)`: real services, closed at the session's end."""
    built: list[Services] = []
    threads = torch.get_num_threads()  # build_services pins torch to one thread, as in serving

    def make(database_url: str, **settings: Any) -> Services:
        services = build_services(
            in_process_settings(database_url, model_path, **settings), Metrics()
        )
        built.append(services)
        return services

    yield make
    for services in built:
        services.store.close(flush_timeout_s=1.0)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def live_services(make_services: MakeServices, migrated_database_url: str) -> Services:
    return make_services(migrated_database_url)


@pytest.fixture(scope="session")
def down_services(make_services: MakeServices) -> Services:
    """Services whose PostgreSQL is a closed loopback port: every database call fails fast."""
    return make_services(
        f"postgresql://digits@127.0.0.1:{free_port()}/digits", db_connect_timeout_s=1
    )


@pytest.fixture
def app_for() -> Iterator[MakeClient]:
    """`app_for(services, **settings)`: a TestClient whose routes see `services`."""
    clients: list[TestClient] = []

    def make(services: Services, **settings: Any) -> TestClient:
        app = create_app(services.settings.model_copy(update=settings))
        app.dependency_overrides[get_services] = lambda: services
        # Not entered as a context manager: the lifespan (model load, migrations) stays off.
        client = TestClient(app, raise_server_exceptions=False)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def app_client(app_for: MakeClient, live_services: Services, database_url: str) -> TestClient:
    """The app in-process on the test PostgreSQL, tables empty."""
    return app_for(live_services)
