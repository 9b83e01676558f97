"""Read the answers people gave (`true_digit` set) for retraining; the only SQL retraining runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

from digit_predictor.db.pool import Database

# Rows per round trip: a drawing is a few kB, so this keeps memory flat and the trips few.
_BATCH_ROWS = 2000


@dataclass(frozen=True)
class Correction:
    """One prediction a person answered: "it was 7" (a confirmation counts as well)."""

    id: int
    image_data: bytes
    true_digit: int
    predicted_digit: int
    feedback_at: datetime
    source: str | None
    model_version: str


def iter_corrections(db: Database, *, batch_rows: int = _BATCH_ROWS) -> Iterator[Correction]:
    """Every answered prediction, oldest id first, read in batches (keyset pagination).

    A row holds only its newest answer (feedback replaces the earlier one), so each row yields
    one correction. Batches are separate short statements, so a statement timeout meant for the
    api still holds, and nothing stays locked while the model trains.
    """
    last_id = 0
    while True:
        with db.connection() as conn, conn.cursor() as cur:
            cur.execute(
                """SELECT id, image_data, true_digit, predicted_digit, feedback_at, source,
                          model_version
                   FROM predictions
                   WHERE true_digit IS NOT NULL AND id > %s
                   ORDER BY id LIMIT %s""",
                (last_id, batch_rows),
            )
            rows = cur.fetchall()
        for row in rows:
            yield Correction(
                id=int(row[0]),
                image_data=bytes(row[1]),
                true_digit=int(row[2]),
                predicted_digit=int(row[3]),
                feedback_at=row[4],
                source=row[5],
                model_version=str(row[6]),
            )
        if len(rows) < batch_rows:
            return
        last_id = int(rows[-1][0])


def read_corrections(db: Database) -> list[Correction]:
    return list(iter_corrections(db))


def count_corrections(db: Database, *, answered_after: datetime | None = None) -> int:
    """How many predictions carry an answer, optionally only answers given after a moment."""
    with db.connection() as conn, conn.cursor() as cur:
        cur.execute(
            """SELECT count(*) FROM predictions
               WHERE true_digit IS NOT NULL
                 AND (%(after)s::timestamptz IS NULL OR feedback_at > %(after)s::timestamptz)""",
            {"after": answered_after},
        )
        row = cur.fetchone()
    assert row is not None
    return int(row[0])
