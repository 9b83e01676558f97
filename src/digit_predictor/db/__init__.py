"""PostgreSQL data layer shared by the api and the web app: pool, migrations, queries.

Callers see two error types, never the driver's: `DatabaseUnavailable` (try again later) and
`RowRejected` (the database refused the values).
"""

from digit_predictor.db.errors import DatabaseUnavailable, RowRejected
from digit_predictor.db.pool import Database

__all__ = ["Database", "DatabaseUnavailable", "RowRejected"]
