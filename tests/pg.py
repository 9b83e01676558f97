"""Throwaway PostgreSQL clusters for tests: see digit_predictor.testing.postgres."""

from digit_predictor.testing.loopback import free_port
from digit_predictor.testing.postgres import (
    PG_CLUSTER,
    ClusterFailed,
    PostgresServer,
    start_cluster,
    with_database,
)

__all__ = [
    "PG_CLUSTER",
    "ClusterFailed",
    "PostgresServer",
    "free_port",
    "start_cluster",
    "with_database",
]
