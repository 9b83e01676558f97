"""`python -m digit_predictor.db COMMAND`

migrate [--wait SECONDS]       apply pending migrations, put the statistics roll-up's days in
                               HIGH_SCORE_TZ (rebuilding it if the setting changed), then
                               register the shipped model as the first champion
rebuild-rollup                 recount the statistics roll-up from every prediction
check-rollup                   compare the roll-up with a full recount; exit 1 on a difference
prune-drawings [--older-than-days N] [--dry-run]
                               drop the drawings of uncorrected predictions older than N days
                               (default DRAWING_RETENTION_DAYS; does nothing when unset)
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from digit_predictor.config import get_settings
from digit_predictor.db import maintenance, registry
from digit_predictor.db.errors import DatabaseUnavailable, RowRejected
from digit_predictor.db.migrate import migrate
from digit_predictor.db.pool import Database


def _migrate(dsn: str, wait_s: float, time_zone: str, model_path: Path) -> int:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            applied = migrate(dsn)
            break
        except DatabaseUnavailable as exc:
            if time.monotonic() >= deadline:
                print(f"database not reachable: {str(exc).strip()}", file=sys.stderr)
                return 1
            time.sleep(1)
    print(f"migrations applied: {', '.join(applied)}" if applied else "schema is up to date")
    rebuilt = maintenance.sync_rollup_time_zone(dsn, time_zone)
    if rebuilt:
        print(
            f"statistics roll-up rebuilt with days in {rebuilt.time_zone}: "
            f"{rebuilt.predictions} predictions in {rebuilt.seconds:.1f} s"
        )
    if model_path.is_file():
        # The shipped weights become the first champion (idempotent), so every api process
        # serves the registry's champion from its first request.
        db = Database(dsn, max_size=1)
        try:
            shipped = registry.register_shipped(db, model_path)
        finally:
            db.close()
        print(f"shipped model {shipped.version}: {shipped.status}")
    return 0


def _prune(dsn: str, days: int | None, dry_run: bool) -> int:
    if days is None:
        print("drawing retention is off (DRAWING_RETENTION_DAYS is unset): nothing dropped")
        return 0
    if dry_run:
        print(f"would drop drawings of uncorrected predictions older than {days} days")
        return 0
    done = maintenance.prune_drawings(dsn, days, progress=sys.stderr.isatty())
    print(
        f"dropped {done.drawings} drawings ({done.bytes / 1e6:.1f} MB) of uncorrected "
        f"predictions older than {days} days (created before "
        f"{done.cutoff.isoformat(timespec='seconds')}); rows and statistics kept"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m digit_predictor.db",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("migrate", help="apply pending schema migrations")
    run.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying this long while the database is not reachable yet",
    )
    sub.add_parser("rebuild-rollup", help="recount the statistics roll-up from every prediction")
    sub.add_parser("check-rollup", help="compare the statistics roll-up with a full recount")
    prune = sub.add_parser("prune-drawings", help="drop old drawings nobody corrected")
    prune.add_argument(
        "--older-than-days",
        type=int,
        metavar="N",
        help="overrides DRAWING_RETENTION_DAYS for this run",
    )
    prune.add_argument("--dry-run", action="store_true", help="say what would happen, do nothing")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = get_settings()
    dsn = settings.dsn
    try:
        if args.command == "migrate":
            return _migrate(dsn, args.wait, settings.high_score_tz, settings.model_path)
        if args.command == "rebuild-rollup":
            done = maintenance.rebuild_rollup(dsn, settings.high_score_tz)
            print(f"statistics roll-up rebuilt: {done.predictions} predictions")
            return 0
        if args.command == "check-rollup":
            differences = maintenance.rollup_differences(dsn)
            for row in differences:
                print("differs:", *row)
            print(f"{len(differences)} differences between the roll-up and a full recount")
            return 1 if differences else 0
        days = (
            settings.drawing_retention_days
            if args.older_than_days is None
            else args.older_than_days
        )
        if days is not None and days < 1:
            parser.error("--older-than-days must be at least 1")
        return _prune(dsn, days, args.dry_run)
    except (DatabaseUnavailable, RowRejected) as exc:
        print(f"{args.command} failed: {str(exc).strip()}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
