"""What the Models section shows: the registry's versions, the live one, and gate tables.

Plain functions of a `Database`: no Streamlit here. The data layer reports every database
failure as `DatabaseUnavailable`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from digit_predictor.db import Database, registry
from digit_predictor.db.registry import ModelRecord

VERSION_COLUMNS = ["Version", "Status", "Created", "Promoted", "Parent", "Reason"]


@dataclass(frozen=True)
class Models:
    versions: list[ModelRecord]

    @property
    def champion(self) -> ModelRecord | None:
        return next((m for m in self.versions if m.status == "champion"), None)


def load_models(db: Database) -> Models:
    return Models(registry.list_models(db))


def versions_frame(models: Models) -> pd.DataFrame:
    return pd.DataFrame(
        [
            [m.version, m.status, m.created_at, m.promoted_at, m.parent_version, m.reason]
            for m in models.versions
        ],
        columns=VERSION_COLUMNS,
    )


def gate_frame(record: ModelRecord) -> pd.DataFrame | None:
    """The gate table stored in a challenger's card (one row per benchmark), if it has one."""
    gate: Any = record.card.get("gate")
    rows = gate.get("rows") if isinstance(gate, dict) else None
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        return None
    return pd.DataFrame(rows)
