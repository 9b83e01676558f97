"""Throwaway PostgreSQL clusters for tests and benchmarks, started with scripts/pg_cluster.sh."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from digit_predictor.config import PROJECT_ROOT
from digit_predictor.testing.loopback import free_port

PG_CLUSTER = PROJECT_ROOT / "scripts" / "pg_cluster.sh"


class ClusterFailed(RuntimeError):
    pass


def with_database(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path="/" + name))


@dataclass
class PostgresServer:
    admin_url: str  # a superuser on the maintenance database
    data_dir: Path | None  # set when this test run owns the cluster and may stop it

    def require_control(self) -> Path:
        """The cluster's folder; skips the calling test when the server is not ours to control.

        Tests that start background work should call this before starting it.
        """
        if self.data_dir is None:
            import pytest  # only tests get here: a benchmark always owns its cluster

            pytest.skip("the server comes from TEST_DATABASE_URL; this test run cannot control it")
        return self.data_dir

    def restart(self) -> None:
        subprocess.run([str(PG_CLUSTER), "restart", str(self.require_control())], check=True)

    def stop(self) -> None:
        subprocess.run([str(PG_CLUSTER), "stop", str(self.require_control())], check=True)

    def start(self) -> None:
        subprocess.run(
            [str(PG_CLUSTER), "start", str(self.require_control())],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    def destroy(self) -> None:
        data_dir = self.require_control()
        subprocess.run([str(PG_CLUSTER), "destroy", str(data_dir)], check=False)
        shutil.rmtree(data_dir.parent, ignore_errors=True)


def start_cluster(port: int | None = None) -> PostgresServer:
    """A new cluster on `port` (a free one by default); `destroy()` removes it."""
    # /tmp rather than the checkout: as root the cluster belongs to `postgres`, which must be
    # able to reach its folder even when the checkout lives in a private home directory.
    parent = Path(tempfile.mkdtemp(prefix="digit-predictor-pg-"))
    parent.chmod(0o755)
    data_dir = parent / "cluster"
    out = subprocess.run(
        [str(PG_CLUSTER), "start", str(data_dir), str(port or free_port())],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        shutil.rmtree(parent, ignore_errors=True)
        raise ClusterFailed(f"could not start a throwaway PostgreSQL: {out.stderr}")
    url = out.stdout.strip().splitlines()[-1]
    return PostgresServer(admin_url=with_database(url, "postgres"), data_dir=data_dir)
