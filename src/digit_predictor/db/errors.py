"""The data layer's two error types. psycopg2's many exceptions are translated into these once,
where a connection is used (`Database.connection`), so no caller outside `db/` needs the driver.
"""

from __future__ import annotations


class DatabaseUnavailable(RuntimeError):
    """PostgreSQL could not be reached, the connection broke, or a statement timed out.

    Transient by nature: retrying later may succeed.
    """


class RowRejected(ValueError):
    """PostgreSQL refused the values themselves (a constraint, a value out of range).

    Permanent: the same row will be refused again.
    """
