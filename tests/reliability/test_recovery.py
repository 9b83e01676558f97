"""Group commit after an outage: a 3 s PostgreSQL stop under load at concurrency 32.

The api (two workers, as deployed on two CPUs) answers 202 while PostgreSQL is away and keeps
every row; once it is back, each worker's writer drains its backlog in large batches, so the
api answers 201 again within 2 s even though the load never stops.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.api import drawings
from tests.pg import PostgresServer
from tests.reliability.load import LoadResult, run_load
from tests.reliability.test_load import stored_request_ids
from tests.servers import api_env, api_server, wait_for

pytestmark = pytest.mark.reliability

OUTAGE_S = 3.0
RECOVERY_LIMIT_S = 2.0


def test_a_3_s_postgresql_stop_under_load_recovers_within_2_s(
    migrated_database_url: str,
    database_url: str,
    reliability_model: Path,
    pg_server: PostgresServer,
) -> None:
    pg_server.require_control()
    images = [drawings.drawing_png(digit) for digit in drawings.STROKES]
    env = api_env(migrated_database_url, reliability_model, db_connect_timeout_s=1)
    results: list[LoadResult] = []
    stop = threading.Event()
    with api_server(env, workers=2) as api:
        loader = threading.Thread(
            target=lambda: results.append(run_load(api.url, images, concurrency=32, stop=stop))
        )
        loader.start()
        try:
            time.sleep(3.0)
            stopped_at = time.monotonic()
            pg_server.stop()
            time.sleep(OUTAGE_S)
            pg_server.start()  # returns once PostgreSQL accepts connections
            back_at = time.monotonic()
            time.sleep(6.0)
        finally:
            stop.set()
            loader.join()
        result = results[0]
        statuses = result.statuses()
        queued = [o for o in result.outcomes if o.status == 202]
        last_202 = max(o.answered_at for o in queued) - back_at if queued else float("-inf")
        after = [o for o in result.outcomes if o.answered_at > back_at + RECOVERY_LIMIT_S]
        print(
            f"\n{len(result.outcomes)} predictions at c=32 in {result.seconds:.1f} s "
            f"({len(result.outcomes) / result.seconds:.0f}/s), PostgreSQL stopped for "
            f"{back_at - stopped_at:.1f} s: {statuses}; last 202 {last_202:+.2f} s after "
            f"PostgreSQL was back; {len(after)} answers after that, all 201"
        )
        for record in api.log_records():
            if record["msg"] in ("database back: writing queued rows", "write backlog drained"):
                print({k: v for k, v in record.items() if k not in ("logger", "level")})
        assert result.errors() == []
        assert set(statuses) <= {201, 202}, statuses
        assert len(queued) > 50  # the outage really happened under load
        assert last_202 <= RECOVERY_LIMIT_S
        assert after and all(o.status == 201 for o in after)

        # Nothing lost, nothing twice: one row per answer once the queues are empty.
        answered = sorted(str(o.body["request_id"]) for o in result.outcomes if o.body)
        wait_for(lambda: len(stored_request_ids(database_url)) >= len(answered), timeout_s=30)
        assert sorted(stored_request_ids(database_url)) == answered
        assert not [r for r in api.log_records() if r.get("status", 0) >= 500]
