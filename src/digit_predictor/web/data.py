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
    total: int  # every stored prediction, from the statistics roll-up
    page: int  # 1-based: how many pages from the newest
    page_size: int
    before: int | None  # the cursor this page was read with (None: the newest rows)
    next_before: int | None  # cursor of the next, older page; None on the last

    @property
    def pages(self) -> int:
        return max(1, math.ceil(self.total / self.page_size))

    @property
    def first_row(self) -> int:
        return 0 if self.frame.empty else (self.page - 1) * self.page_size + 1

    @property
    def last_row(self) -> int:
        return 0 if self.frame.empty else (self.page - 1) * self.page_size + len(self.frame)


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


def load_history(
    db: Database,
    tz: ZoneInfo,
    *,
    page_size: int,
    before: int | None = None,
    page: int = 1,
) -> HistoryPage:
    """One page of predictions with thumbnails: the newest, or those older than `before`.

    Keyset paging: a page near the oldest rows costs what the first one does. `page` only
    numbers the rows shown. Raises PredictionNotFound when the `before` row is gone.
    """
    if page_size < 1:
        raise ValueError("page_size must be positive")
    rows = queries.predictions_page(db, limit=page_size, before=before, with_images=True)
    return HistoryPage(
        frame=history_frame(rows.items, tz),
        total=queries.count_predictions(db),
        page=max(page, 1),
        page_size=page_size,
        before=before,
        next_before=rows.next_before,
    )


def load_statistics(db: Database, tz: ZoneInfo, *, days: int = 30) -> Statistics:
    return queries.statistics(db, tz, days=days)
