"""Fixtures for the api tests: an untrained model and real uvicorn servers on a real PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.servers import ApiServer, api_env, make_test_model, start_api

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
