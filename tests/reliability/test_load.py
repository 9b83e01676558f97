"""5,000 predictions at concurrency 32: no 5xx, no connection error, one row per 201."""

from __future__ import annotations

import psycopg2
import pytest

from tests.api import drawings
from tests.reliability.load import run_load
from tests.servers import ApiServer

pytestmark = pytest.mark.reliability

TOTAL = 5_000
CONCURRENCY = 32


def stored_request_ids(database_url: str) -> list[str]:
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT request_id::text FROM predictions")
            return [row[0] for row in cur.fetchall()]
    finally:
        conn.close()


def test_5000_predictions_at_concurrency_32(reliability_api: ApiServer, database_url: str) -> None:
    images = [
        drawings.drawing_png(digit, shift=(dx, dy), width=width)
        for digit in drawings.STROKES
        for dx, dy, width in ((0, 0, 18), (-30, 20, 12), (25, -15, 24))
    ]

    result = run_load(reliability_api.url, images, total=TOTAL, concurrency=CONCURRENCY)

    print(
        f"\n{TOTAL} predictions at concurrency {CONCURRENCY}: {result.seconds:.1f} s, "
        f"{TOTAL / result.seconds:.0f} req/s, statuses {result.statuses()}"
    )
    assert result.errors() == []
    assert len(result.outcomes) == TOTAL
    assert result.statuses() == {201: TOTAL}

    answered = [str(o.body["request_id"]) for o in result.outcomes if o.body]
    ids = [o.body["id"] for o in result.outcomes if o.body]
    assert len(set(ids)) == TOTAL  # every 201 names its own row
    stored = stored_request_ids(database_url)
    assert len(stored) == TOTAL
    assert sorted(stored) == sorted(answered)  # exactly one row per 201 answer
    assert not [r for r in reliability_api.log_records() if r.get("status", 0) >= 500]
