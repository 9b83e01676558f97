"""People's corrections as labelled digits: duplicates resolved, preprocessed, split stably.

Rules (each one counted, so a run says what it did with every row):
- a row holds only its newest answer (a later answer replaces an earlier one in the database);
- rows whose image bytes are identical are one drawing: each source votes once with its newest
  answer (rows without a source vote one each); a unanimous or majority label wins, a tie is
  dropped, because nobody can tell which answer is right;
- the drawing goes through the same preprocessing as serving (`preprocess_bytes`); one that no
  longer decodes or is empty is dropped;
- a hash of the drawing's first row id puts about 20% of drawings in a feedback holdout that is
  never trained on. It depends on nothing but that id, so it does not move between runs.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np

from digit_predictor.db.corrections import Correction
from digit_predictor.ml.preprocess import EmptyDrawingError, InvalidImageError, preprocess_bytes

HOLDOUT_SHARE = 0.2
_HOLDOUT_SALT = b"digit-predictor feedback holdout v1:"


def in_holdout(row_id: int, share: float = HOLDOUT_SHARE) -> bool:
    """Stable: the same id is always on the same side, whatever else is in the database."""
    digest = hashlib.sha256(_HOLDOUT_SALT + str(row_id).encode("ascii")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


@dataclass(frozen=True)
class Drawing:
    """One distinct drawing with its resolved label."""

    first_id: int  # the smallest row id holding these bytes; decides the split
    row_ids: tuple[int, ...]
    image_data: bytes
    label: int
    source: str | None  # of the newest row that voted for the label
    predicted_digit: int  # what the model answered on that row
    feedback_at: datetime  # newest answer among the rows


@dataclass
class ResolveCounts:
    rows: int = 0
    drawings: int = 0
    duplicate_rows: int = 0  # rows merged into another row with identical bytes
    conflicts_resolved: int = 0  # identical bytes, different answers, a clear majority
    conflicts_dropped: int = 0  # identical bytes, different answers, a tie: dropped
    conflict_rows_dropped: int = 0


def resolve(corrections: Iterable[Correction]) -> tuple[list[Drawing], ResolveCounts]:
    groups: dict[bytes, list[Correction]] = {}
    counts = ResolveCounts()
    for row in corrections:
        counts.rows += 1
        groups.setdefault(hashlib.sha256(row.image_data).digest(), []).append(row)
    drawings: list[Drawing] = []
    for rows in groups.values():
        rows.sort(key=lambda r: (r.feedback_at, r.id))
        # One vote per source (its newest answer); rows without a source vote one each.
        votes: dict[object, Correction] = {}
        for row in rows:
            votes[row.source if row.source is not None else ("row", row.id)] = row
        tally = Counter(v.true_digit for v in votes.values()).most_common()
        if len(tally) > 1 and tally[0][1] == tally[1][1]:
            counts.conflicts_dropped += 1
            counts.conflict_rows_dropped += len(rows)
            continue
        label = tally[0][0]
        if len(tally) > 1:
            counts.conflicts_resolved += 1
        counts.duplicate_rows += len(rows) - 1
        winner = max((v for v in votes.values() if v.true_digit == label), key=_newest)
        drawings.append(
            Drawing(
                first_id=min(r.id for r in rows),
                row_ids=tuple(sorted(r.id for r in rows)),
                image_data=winner.image_data,
                label=label,
                source=winner.source,
                predicted_digit=winner.predicted_digit,
                feedback_at=max(r.feedback_at for r in rows),
            )
        )
    drawings.sort(key=lambda d: d.first_id)  # a deterministic order, whatever the dict did
    counts.drawings = len(drawings)
    return drawings, counts


def _newest(row: Correction) -> tuple[datetime, int]:
    return (row.feedback_at, row.id)


@dataclass
class LabelledSet:
    """Preprocessed drawings as the model sees them, with where each came from."""

    images: np.ndarray  # uint8 (N, 28, 28)
    labels: np.ndarray  # int64 (N,)
    first_ids: np.ndarray  # int64 (N,)
    sources: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, keep: np.ndarray) -> LabelledSet:
        index = np.flatnonzero(keep)
        return LabelledSet(
            images=self.images[index],
            labels=self.labels[index],
            first_ids=self.first_ids[index],
            sources=[self.sources[i] for i in index],
        )


@dataclass
class FeedbackData:
    train: LabelledSet
    holdout: LabelledSet
    resolved: ResolveCounts
    undecodable: int
    empty: int
    newest_feedback_at: datetime | None

    def counts(self) -> dict[str, int]:
        return {
            "rows": self.resolved.rows,
            "distinct_drawings": self.resolved.drawings,
            "duplicate_rows_merged": self.resolved.duplicate_rows,
            "conflicts_resolved_by_majority": self.resolved.conflicts_resolved,
            "conflicts_dropped_as_ties": self.resolved.conflicts_dropped,
            "rows_in_dropped_conflicts": self.resolved.conflict_rows_dropped,
            "undecodable_dropped": self.undecodable,
            "empty_dropped": self.empty,
            "train": len(self.train),
            "holdout": len(self.holdout),
        }


def _empty_set() -> LabelledSet:
    return LabelledSet(
        images=np.zeros((0, 28, 28), dtype=np.uint8),
        labels=np.zeros(0, dtype=np.int64),
        first_ids=np.zeros(0, dtype=np.int64),
    )


def _stack(drawings: Sequence[tuple[Drawing, np.ndarray]]) -> LabelledSet:
    if not drawings:
        return _empty_set()
    return LabelledSet(
        images=np.stack([image for _, image in drawings]),
        labels=np.asarray([d.label for d, _ in drawings], dtype=np.int64),
        first_ids=np.asarray([d.first_id for d, _ in drawings], dtype=np.int64),
        sources=[d.source for d, _ in drawings],
    )


def build_feedback_data(
    corrections: Iterable[Correction], holdout_share: float = HOLDOUT_SHARE
) -> FeedbackData:
    rows = list(corrections)
    drawings, resolved = resolve(rows)
    train: list[tuple[Drawing, np.ndarray]] = []
    holdout: list[tuple[Drawing, np.ndarray]] = []
    undecodable = empty = 0
    for drawing in drawings:
        try:
            image = preprocess_bytes(drawing.image_data).image
        except InvalidImageError:
            undecodable += 1
            continue
        except EmptyDrawingError:
            empty += 1
            continue
        side = holdout if in_holdout(drawing.first_id, holdout_share) else train
        side.append((drawing, image))
    return FeedbackData(
        train=_stack(train),
        holdout=_stack(holdout),
        resolved=resolved,
        undecodable=undecodable,
        empty=empty,
        newest_feedback_at=max((r.feedback_at for r in rows), default=None),
    )
