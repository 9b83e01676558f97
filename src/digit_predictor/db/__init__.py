"""PostgreSQL data layer shared by the api and the web app: pool, migrations, queries."""

from digit_predictor.db.pool import Database, DatabaseUnavailable

__all__ = ["Database", "DatabaseUnavailable"]
