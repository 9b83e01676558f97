"""The api as a real uvicorn subprocess, for tests: see digit_predictor.testing.api_server.

The harness lives in the package so that scripts (benchmarks) import it without a sys.path
edit; tests keep importing it from here.
"""

from digit_predictor.testing.api_server import (
    APP_SETTINGS,
    CLEAN_EXIT,
    ApiServer,
    api_env,
    api_server,
    app_free_environ,
    make_test_model,
    start_api,
)
from digit_predictor.testing.loopback import ServerFailed, free_port, wait_for, wait_ready

__all__ = [
    "APP_SETTINGS",
    "CLEAN_EXIT",
    "ApiServer",
    "ServerFailed",
    "api_env",
    "api_server",
    "app_free_environ",
    "free_port",
    "make_test_model",
    "start_api",
    "wait_for",
    "wait_ready",
]
