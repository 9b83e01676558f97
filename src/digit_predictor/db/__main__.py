"""`python -m digit_predictor.db migrate [--wait SECONDS]`"""

from __future__ import annotations

import argparse
import logging
import sys
import time

from digit_predictor.config import get_settings
from digit_predictor.db import registry
from digit_predictor.db.errors import DatabaseUnavailable
from digit_predictor.db.migrate import migrate
from digit_predictor.db.pool import Database


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m digit_predictor.db")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("migrate", help="apply pending schema migrations")
    run.add_argument(
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="keep retrying this long while the database is not reachable yet",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    settings = get_settings()
    dsn = settings.dsn
    deadline = time.monotonic() + args.wait
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
    if settings.model_path.is_file():
        # The shipped weights become the first champion (idempotent), so every api process
        # serves the registry's champion from its first request.
        db = Database(dsn, max_size=1)
        try:
            shipped = registry.register_shipped(db, settings.model_path)
        finally:
            db.close()
        print(f"shipped model {shipped.version}: {shipped.status}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
