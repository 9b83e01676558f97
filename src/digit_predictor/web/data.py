"""What the pages read from and write to PostgreSQL, through the shared data layer's queries.

Plain functions of a `Database`: no Streamlit here. Every database failure comes out as
`DatabaseUnavailable`, so a page has one thing to catch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

import pandas as pd

from digit_predictor.db import Database, DatabaseUnavailable, queries
from digit_predictor.db.queries import Prediction, PredictionNotFound, Statistics
from digit_predictor.web.images import thumbnail_uri

__all__ = [
    "DatabaseUnavailable",
    "HighScore",
    "HistoryPage",
    "PredictionNotFound",
    "high_score",
    "history_frame",
    "load_history",
    "load_statistics",
    "save_feedback",
]

HISTORY_COLUMNS = ["Drawing", "Time", "Predicted", "Confidence", "True digit", "Result", "ID"]


def save_feedback(db: Database, prediction_id: int, true_digit: int) -> Prediction:
    """Store the person's answer (a later one replaces it). Raises PredictionNotFound."""
    if not 0 <= true_digit <= 9:
        raise ValueError(f"a digit is 0..9, not {true_digit}")
    return queries.record_feedback(db, prediction_id, true_digit)


@dataclass(frozen=True)
class HighScore:
    digit: int
    confidence: float
    created_at: datetime  # in the high-score time zone


def high_score(db: Database, tz: ZoneInfo, now: datetime | None = None) -> HighScore | None:
    """The best confidence since local midnight in `tz`, or None when nothing was drawn today."""
    best = queries.high_score_today(db, tz, now)
    if best is None:
        return None
    return HighScore(
        digit=best.predicted_digit,
        confidence=best.confidence,
        created_at=best.created_at.astimezone(tz),
    )


@dataclass(frozen=True)
class HistoryPage:
    frame: pd.DataFrame
    total: int
    page: int  # 1-based, clamped to the pages there are
    pages: int
    page_size: int

    @property
    def first_row(self) -> int:
        return 0 if self.total == 0 else (self.page - 1) * self.page_size + 1

    @property
    def last_row(self) -> int:
        return min(self.page * self.page_size, self.total)


def result_label(prediction: Prediction) -> str:
    if prediction.is_correct is None:
        return "no answer yet"
    return "✓ right" if prediction.is_correct else "✗ wrong"


def history_frame(predictions: list[Prediction], tz: ZoneInfo) -> pd.DataFrame:
    """One row per prediction, newest first as given, ready for `st.dataframe`."""
    rows = [
        {
            "Drawing": thumbnail_uri(p.image_data),
            "Time": p.created_at.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S"),
            "Predicted": p.predicted_digit,
            "Confidence": p.confidence,
            "True digit": "" if p.true_digit is None else str(p.true_digit),
            "Result": result_label(p),
            "ID": p.id,
        }
        for p in predictions
    ]
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def load_history(db: Database, tz: ZoneInfo, *, page: int, page_size: int) -> HistoryPage:
    """One page of predictions, newest first, with thumbnails."""
    if page_size < 1:
        raise ValueError("page_size must be positive")
    total = queries.count_predictions(db)
    pages = max(1, math.ceil(total / page_size))
    current = min(max(page, 1), pages)
    rows = queries.recent_predictions(
        db, limit=page_size, offset=(current - 1) * page_size, with_images=True
    )
    return HistoryPage(history_frame(rows, tz), total, current, pages, page_size)


def load_statistics(db: Database, tz: ZoneInfo, *, days: int = 30) -> Statistics:
    return queries.statistics(db, tz, days=days)
