"""Real processes for tests and benchmarks: a throwaway PostgreSQL, the api and the web app.

Importable from scripts (`from digit_predictor.testing.api_server import start_api`) as well as
from tests (tests/servers.py, tests/pg.py and tests/web/web_server.py re-export it). Needs the
development requirements (httpx; torch for `make_test_model`) and a checkout: the clusters are
started with scripts/pg_cluster.sh. Not part of the images (.dockerignore leaves it out).
"""
