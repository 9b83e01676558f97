"""The api's read calls at millions of stored predictions, and the write path with the
statistics triggers on and off.

    python scripts/bench_queries.py --rows 1000000
    python scripts/bench_queries.py --rows 10000000 --small-drawings --skip-offset
    python scripts/bench_queries.py --rows 200000 --write-requests 1200   # + triggers on vs off

Starts a throwaway PostgreSQL (or creates, and afterwards drops, a database on the server of
--admin-url), fills it with N realistic predictions in SQL (120 days or --days, in time order, three
model versions, 20% corrected, confidences skewed high, real canvas drawings as PNGs), builds the
statistics roll-up, starts the api and times over HTTP (median of --repeat):

* GET /v1/stats
* GET /v1/predictions?limit=20                       (the first History page)
* GET /v1/predictions?limit=20&before=<id>           (a page near the oldest rows, keyset)
* GET /v1/predictions?limit=20&offset=<N-60>         (the same page the old, slow way)

and checks that the totals the api answers equal a count(*) of the table. It prints the fill's
rows per second, the bytes per prediction on disk (row, drawing, each index) and the roll-ups'
size. With --write-requests it also posts drawings through the api in alternating rounds with
the roll-up triggers enabled and disabled, and prints both throughputs and their ratio.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import numpy as np
import psycopg2
from tqdm import tqdm

from digit_predictor.config import DEFAULT_MODEL_PATH
from digit_predictor.db import Database, queries
from digit_predictor.db.maintenance import rollup_differences
from digit_predictor.db.migrate import migrate
from digit_predictor.ml.synthetic_digits import pen_digit, to_png
from digit_predictor.testing.api_server import ApiServer, api_env, start_api
from digit_predictor.testing.postgres import start_cluster, with_database

DAYS = 120
CHUNK = 250_000  # rows per INSERT statement while filling
POOL = 256  # distinct drawings; rows reuse them (bytes per row stay realistic)

# One statement fills rows [lo, hi). Rows are spread evenly over the days and stored in time
# order, as an instance writes them (so a day's rows sit together on disk); request ids are
# sequential (the api's are random, but no read uses them). The model version follows the
# age; a wrong answer is likelier at low confidence and for older versions (v1 over-confident,
# v3 calibrated), so the Statistics page has something true to show.
FILL_SQL = """
INSERT INTO predictions (request_id, created_at, predicted_digit, confidence, probabilities,
                         true_digit, feedback_at, image_data, model_version, latency_ms, source)
SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, created_at, digit, conf,
       array_fill(((1 - conf) / 9)::float8, ARRAY[digit]) || conf
           || array_fill(((1 - conf) / 9)::float8, ARRAY[9 - digit]),
       true_digit, CASE WHEN true_digit IS NOT NULL THEN created_at + interval '20 seconds' END,
       pool.png, version, 4 + 3 * random(), 'web'
FROM (
    SELECT g, created_at, digit, conf, version,
           CASE WHEN answered >= %(corrected)s THEN NULL
                WHEN right_roll < power(conf, CASE version WHEN 'v1' THEN 3.0
                                                           WHEN 'v2' THEN 1.6 ELSE 1.0 END)
                    THEN digit
                ELSE ((digit + 1 + floor(random() * 9)::int) %% 10) END::smallint AS true_digit
    FROM (
        SELECT g, now() - age * interval '1 day' AS created_at,
               floor(random() * 10)::int AS digit,
               1 - 0.45 * power(random(), 3) AS conf,
               CASE WHEN age > %(days)s * 0.6 THEN 'v1'
                    WHEN age > %(days)s * 0.2 THEN 'v2' ELSE 'v3' END AS version,
               random() AS answered, random() AS right_roll
        FROM (SELECT g, %(days)s * (1 - (g + random()) / %(rows)s) AS age
              FROM generate_series(%(lo)s, %(hi)s - 1) AS g) AS aged
    ) AS drawn
) AS rows
JOIN bench_drawings AS pool ON pool.i = rows.g %% %(pool)s
"""


@dataclass
class Timing:
    what: str
    ms: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.ms)


def machine() -> str:
    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs visible, Linux {platform.release()}"


def execute(url: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []
    finally:
        conn.close()


@contextmanager
def throwaway_database(admin_url: str | None) -> Iterator[str]:
    """A new database, dropped afterwards (with its cluster, when this script started one)."""
    cluster = None if admin_url else start_cluster()
    admin = admin_url or (cluster.admin_url if cluster else "")
    name = f"bench_{uuid.uuid4().hex[:8]}"
    execute(admin, f'CREATE DATABASE "{name}"')
    try:
        yield with_database(admin, name)
    finally:
        execute(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if cluster:
            cluster.destroy()


def drawing_pool(small: bool) -> list[bytes]:
    """Canvas drawings as the web app sends them (280x280 RGBA PNG, about 2.9 kB), or the same
    strokes on a 56x56 canvas (about 0.4 kB) to keep 10M rows within a small disk."""
    rng = np.random.default_rng(0)
    pool = []
    for i in range(POOL):
        ink = pen_digit(i % 10, rng)
        if small:
            ink = ink.reshape(56, 5, 56, 5).mean(axis=(1, 3))
        pool.append(to_png(ink, "alpha"))
    return pool


def fill(url: str, rows: int, small: bool, corrected: float, days: int = DAYS) -> float:
    """Insert `rows` predictions; returns rows per second (triggers off, roll-up built after)."""
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE UNLOGGED TABLE bench_drawings (i int PRIMARY KEY, png bytea)")
            for i, png in enumerate(drawing_pool(small)):
                cur.execute("INSERT INTO bench_drawings VALUES (%s, %s)", (i, png))
            # Bulk loading: the roll-up is built once at the end, as migration 0003 does.
            cur.execute("ALTER TABLE predictions DISABLE TRIGGER USER")
            started = time.monotonic()
            with tqdm(total=rows, unit="row", desc="fill", unit_scale=True) as bar:
                for lo in range(0, rows, CHUNK):
                    hi = min(lo + CHUNK, rows)
                    params = {"lo": lo, "hi": hi, "rows": rows, "days": days, "pool": POOL}
                    cur.execute(FILL_SQL, {**params, "corrected": corrected})
                    bar.update(hi - lo)
            seconds = time.monotonic() - started
            cur.execute("ALTER TABLE predictions ENABLE TRIGGER USER")
            cur.execute("DROP TABLE bench_drawings")
    finally:
        conn.close()
    return rows / seconds


def rebuild(url: str) -> float:
    started = time.monotonic()
    execute(url, "SELECT prediction_rollup_rebuild(time_zone) FROM rollup_settings")
    return time.monotonic() - started


def storage(url: str, rows: int) -> list[tuple[str, float]]:
    """Bytes per prediction: the heap row, the drawings (TOAST), each index; and the roll-ups."""
    sizes = dict(
        execute(
            url,
            """SELECT c.relname, pg_relation_size(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind IN ('r', 'i')""",
        )
    )
    [(toast,)] = execute(
        url,
        """SELECT pg_total_relation_size(reltoastrelid) FROM pg_class
           WHERE relname = 'predictions'""",
    )
    [(drawing_bytes,)] = execute(url, "SELECT avg(octet_length(image_data)) FROM predictions")
    per_row: list[tuple[str, float]] = [
        ("drawing as sent (mean PNG bytes)", float(drawing_bytes)),
        ("heap (row, drawings stored inline)", sizes["predictions"] / rows),
        ("TOAST (drawings stored out of line)", toast / rows),
    ]
    for name in sorted(sizes):
        if name.startswith("predictions") and name != "predictions":
            per_row.append((f"index {name}", sizes[name] / rows))
    per_row.append(("total", sum(v for k, v in per_row[1:])))
    return per_row


def timed(call: Callable[[], httpx.Response], repeat: int) -> tuple[list[float], Any]:
    call()  # warm: connection, plan cache, pages
    ms = []
    body: Any = None
    for _ in range(repeat):
        started = time.perf_counter()
        response = call()
        ms.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        body = response.json()
    return ms, body


def measure_reads(api: ApiServer, url: str, repeat: int, skip_offset: bool) -> list[Timing]:
    [(total, answered)] = execute(url, "SELECT count(*), count(true_digit) FROM predictions")
    [(near_oldest,)] = execute(
        url, "SELECT id FROM predictions ORDER BY created_at, id OFFSET 40 LIMIT 1"
    )
    timings = []
    with httpx.Client(base_url=api.url, timeout=120) as client:
        ms, stats = timed(lambda: client.get("/v1/stats"), repeat)
        assert stats["total_predictions"] == total, (stats["total_predictions"], total)
        assert stats["feedback_count"] == answered, (stats["feedback_count"], answered)
        timings.append(Timing("GET /v1/stats", ms))
        ms, first = timed(lambda: client.get("/v1/predictions", params={"limit": 20}), repeat)
        assert first["total"] == total and len(first["items"]) == 20
        timings.append(Timing("GET /v1/predictions?limit=20 (first page)", ms))
        params = {"limit": 20, "before": near_oldest}
        ms, old = timed(lambda: client.get("/v1/predictions", params=params), repeat)
        assert old["total"] == total and len(old["items"]) == 20
        timings.append(Timing("GET /v1/predictions?limit=20&before=<id> (near oldest)", ms))
        if not skip_offset:
            deep = {"limit": 20, "offset": total - 60}
            ms, _ = timed(lambda: client.get("/v1/predictions", params=deep), repeat)
            timings.append(Timing("GET /v1/predictions?limit=20&offset=N-60 (old way)", ms))
    return timings


def measure_in_process(url: str, repeat: int) -> list[Timing]:
    """The parts of /v1/stats, called as the api calls them: the roll-up reads and today's high
    score (which still reads the table: its cost follows the number of rows per day)."""
    tz = ZoneInfo("America/New_York")
    db = Database(url, statement_timeout_ms=120_000)
    parts: list[tuple[str, Callable[[], object]]] = [
        ("queries.statistics (roll-ups)", lambda: queries.statistics(db, tz)),
        ("queries.high_score_today (table)", lambda: queries.high_score_today(db, tz)),
        ("queries.predictions_page (first page)", lambda: queries.predictions_page(db)),
        ("queries.count_predictions (roll-up)", lambda: queries.count_predictions(db)),
    ]
    timings = []
    try:
        for what, call in parts:
            call()
            ms = []
            for _ in range(repeat):
                started = time.perf_counter()
                call()
                ms.append((time.perf_counter() - started) * 1000)
            timings.append(Timing(what, ms))
    finally:
        db.close()
    return timings


def post_round(api: ApiServer, payloads: list[bytes], concurrency: int) -> float:
    """POST every payload at `concurrency`; returns requests per second."""
    clients = [httpx.Client(base_url=api.url, timeout=60) for _ in range(concurrency)]

    def worker(k: int) -> None:
        for png in payloads[k::concurrency]:
            response = clients[k].post(
                "/v1/predictions",
                files={"image": ("d.png", png, "image/png")},
                data={"source": "bench"},
            )
            assert response.status_code == 201, response.text

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    elapsed = time.perf_counter() - started
    for client in clients:
        client.close()
    return len(payloads) / elapsed


def measure_writes(
    api: ApiServer, url: str, requests: int, rounds: int, concurrency: int
) -> dict[str, list[float]]:
    """Alternating rounds (on, off, off, on, ...) so that drift on a shared machine cancels."""
    payloads = drawing_pool(small=False)
    per_round = max(concurrency, requests // (2 * rounds))
    batch = [payloads[i % len(payloads)] for i in range(per_round)]
    post_round(api, batch[: 4 * concurrency], concurrency)  # warm
    results: dict[str, list[float]] = {"on": [], "off": []}
    order = ["on", "off"]
    for _ in tqdm(range(rounds), desc="write rounds"):
        for mode in order:
            execute(
                url,
                f"ALTER TABLE predictions {'ENABLE' if mode == 'on' else 'DISABLE'} TRIGGER USER",
            )
            results[mode].append(post_round(api, batch, concurrency))
        order.reverse()
    execute(url, "ALTER TABLE predictions ENABLE TRIGGER USER")
    return results


def measure_inserts(url: str, statements: int, rounds: int) -> dict[str, list[float]]:
    """The database's share alone: server-side execution time (ms, EXPLAIN ANALYZE, without the
    commit's disk flush, which on a shared disk is mostly noise) of the api's INSERT, whose ON
    CONFLICT clause fires the UPDATE trigger too; alternating rounds of median times."""
    payload = drawing_pool(small=False)[0]
    results: dict[str, list[float]] = {"on": [], "off": [], "in triggers": []}
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            order = ["on", "off"]
            for _ in range(rounds):
                for mode in order:
                    switch = "ENABLE" if mode == "on" else "DISABLE"
                    cur.execute(f"ALTER TABLE predictions {switch} TRIGGER USER")
                    executed, in_triggers = [], []
                    for i in range(statements):
                        cur.execute(
                            """EXPLAIN (ANALYZE, FORMAT JSON)
                               INSERT INTO predictions (request_id, created_at, predicted_digit,
                                   confidence, probabilities, image_data, model_version,
                                   latency_ms, source)
                               VALUES (%s, now(), %s, %s, %s, %s, 'v3', 5, 'bench')
                               ON CONFLICT (request_id) DO UPDATE
                                   SET request_id = EXCLUDED.request_id
                               RETURNING id""",
                            (str(uuid.uuid4()), i % 10, 0.9, [0.1] * 10, payload),
                        )
                        row = cur.fetchone()
                        assert row is not None
                        [plan] = row[0]
                        executed.append(plan["Execution Time"])
                        in_triggers.append(sum(t["Time"] for t in plan.get("Triggers", [])))
                    # The first statements after the switch compile the trigger: skip them.
                    results[mode].append(statistics.median(executed[10:]))
                    if mode == "on":
                        results["in triggers"].append(statistics.median(in_triggers[10:]))
                order.reverse()
            cur.execute("ALTER TABLE predictions ENABLE TRIGGER USER")
    finally:
        conn.close()
    return results


def print_ratio(title: str, results: dict[str, list[float]], unit: str) -> None:
    on, off = statistics.median(results["on"]), statistics.median(results["off"])
    print(f"\n{title}")
    for mode, value in (("on", on), ("off", off)):
        rounds = ", ".join(f"{v:.0f}" for v in results[mode])
        print(f"  triggers {mode:<3}: {value:7.1f} {unit}  (rounds: {rounds})")
    print(f"  on / off    : {on / off:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True, help="predictions to fill")
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per read (median)")
    parser.add_argument("--corrected", type=float, default=0.2, help="share with feedback")
    parser.add_argument(
        "--days", type=int, default=DAYS, help="days the rows span (rows per day = rows / days)"
    )
    parser.add_argument("--small-drawings", action="store_true", help="56x56 drawings (0.4 kB)")
    parser.add_argument("--skip-offset", action="store_true", help="skip the slow offset page")
    parser.add_argument("--admin-url", help="superuser URL of a server to create the db on")
    parser.add_argument("--model-path", type=Path, default=DEFAULT_MODEL_PATH)
    parser.add_argument("--write-requests", type=int, default=0, help="POSTs, on and off")
    parser.add_argument("--write-rounds", type=int, default=6)
    parser.add_argument("--write-concurrency", type=int, default=4)
    args = parser.parse_args()

    print(f"machine: {machine()}")
    with throwaway_database(args.admin_url) as url:
        migrate(url)
        rate = fill(url, args.rows, args.small_drawings, args.corrected, args.days)
        print(
            f"fill: {args.rows:,} rows over {args.days} days at {rate:,.0f} rows/s "
            "(SQL, roll-up triggers off)"
        )
        seconds = rebuild(url)
        print(
            f"roll-up built from {args.rows:,} rows in {seconds:.1f} s (what migration 0003 "
            "costs at this size)"
        )
        started = time.monotonic()
        execute(url, "VACUUM (ANALYZE)")  # as autovacuum leaves a database at rest
        print(f"vacuum analyze: {time.monotonic() - started:.1f} s")
        [(daily, totals, rollup_bytes)] = execute(
            url,
            """SELECT (SELECT count(*) FROM prediction_daily),
                      (SELECT count(*) FROM prediction_totals),
                      pg_total_relation_size('prediction_daily')
                      + pg_total_relation_size('prediction_totals')""",
        )
        print(f"roll-ups: {daily:,} daily rows, {totals:,} total rows, {rollup_bytes / 1e6:.1f} MB")
        print("\nbytes per prediction on disk:")
        for what, value in storage(url, args.rows):
            print(f"  {what:<46} {value:8.0f}")

        env = api_env(url, args.model_path, db_statement_timeout_ms=120_000)
        api = start_api(env, ready_path="/readyz")
        try:
            timings = measure_reads(api, url, args.repeat, args.skip_offset)
            print(f"\nreads over HTTP at {args.rows:,} rows, median of {args.repeat} (ms):")
            print("| call | median ms | min | max |\n|---|---:|---:|---:|")
            for t in timings:
                print(f"| {t.what} | {t.median:.1f} | {min(t.ms):.1f} | {max(t.ms):.1f} |")
            print("totals checked: /v1/stats and the list's total equal count(*) of the table")
            print(f"\nin-process, median of {args.repeat} (ms):")
            for t in measure_in_process(url, args.repeat):
                print(f"| {t.what} | {t.median:.1f} | {min(t.ms):.1f} | {max(t.ms):.1f} |")
            if args.write_requests:
                results = measure_writes(
                    api, url, args.write_requests, args.write_rounds, args.write_concurrency
                )
                print_ratio(
                    f"POST /v1/predictions over HTTP at concurrency {args.write_concurrency}, "
                    f"{args.write_rounds} alternating rounds each:",
                    results,
                    "req/s",
                )
                inserts = measure_inserts(url, 200, args.write_rounds)
                on, off = statistics.median(inserts["on"]), statistics.median(inserts["off"])
                print(
                    "\nthe api's INSERT alone, executed in PostgreSQL (median ms, commit not "
                    f"included): triggers on {on:.3f}, off {off:.3f}, of which in the triggers "
                    f"{statistics.median(inserts['in triggers']):.3f}"
                )
                # Rows written while the triggers were off are not in the roll-up: rebuild.
                rebuild(url)
                assert rollup_differences(url) == []
        finally:
            api.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
