"""A dedicated api for the reliability suite, so its load never mixes with the contract tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import ApiServer, api_env, make_test_model, start_api


@pytest.fixture(scope="session")
def reliability_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_test_model(tmp_path_factory.mktemp("reliability-model"))


@pytest.fixture(scope="session")
def reliability_api_server(
    migrated_database_url: str, reliability_model: Path
) -> Iterator[ApiServer]:
    # A pool as large as the load so that no request waits on a connection.
    server = start_api(api_env(migrated_database_url, reliability_model, db_pool_max=40))
    yield server
    server.cleanup()


@pytest.fixture
def reliability_api(reliability_api_server: ApiServer, database_url: str) -> ApiServer:
    assert reliability_api_server.is_running(), reliability_api_server.logs()[-3000:]
    return reliability_api_server
