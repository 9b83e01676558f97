"""The promotion gate: champion and challenger scored on the same data in the same run.

Promote only when every row holds:
- feedback holdout: the challenger is more accurate, or as accurate with fewer confident mistakes;
- MNIST test: at most 0.1 point lower;
- canvas benchmark, USPS test, optdigits windep: each at most 0.3 point lower.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from digit_predictor.ml.batch import predict_proba
from digit_predictor.ml.data import default_data_dir, load_split
from digit_predictor.ml.evaluate import canvas_benchmark
from digit_predictor.ml.extra_digits import heldout_digits

FEEDBACK = "feedback holdout"
MNIST = "MNIST test"
CANVAS = "canvas benchmark"
USPS = "USPS test"
OPTDIGITS = "optdigits windep"
# A mistake made with at least this confidence is a confident one (the tie-breaker).
CONFIDENT = 0.9
# Largest allowed drop, in accuracy points, per benchmark.
MAX_DROP = {MNIST: 0.1, CANVAS: 0.3, USPS: 0.3, OPTDIGITS: 0.3}
# Float noise when comparing accuracies of the same n images.
_EPS = 1e-9


@dataclass(frozen=True)
class Benchmark:
    name: str
    images: np.ndarray  # uint8 (N, 28, 28) as the model sees them
    labels: np.ndarray  # int64 (N,)


def gate_benchmarks(
    data_dir: Path | None = None,
    *,
    canvas_n: int = 2000,
    limit: int | None = None,
    progress: bool = False,
) -> list[Benchmark]:
    """MNIST test, the canvas benchmark, USPS test and optdigits windep: the same images as
    `python -m digit_predictor.ml.evaluate` scores (`limit` takes the first N of each)."""
    test = load_split(data_dir or default_data_dir(), "t10k")
    n_mnist = len(test.labels) if limit is None else min(limit, len(test.labels))
    n_canvas = canvas_n if limit is None else min(limit, canvas_n)
    canvas, _ = canvas_benchmark(test, n_canvas, np.random.default_rng(0), progress=progress)
    sets = [
        Benchmark(MNIST, test.images[:n_mnist], test.labels[:n_mnist]),
        Benchmark(CANVAS, canvas, test.labels[:n_canvas]),
    ]
    names = {"USPS test": USPS, "optdigits windep": OPTDIGITS}
    for name, (images, labels) in heldout_digits(limit=limit).items():
        sets.append(Benchmark(names[name], images, labels))
    return sets


@dataclass(frozen=True)
class Score:
    accuracy: float
    confident_mistakes: int


def _score(probs: np.ndarray, labels: np.ndarray) -> Score:
    if len(labels) == 0:
        return Score(accuracy=float("nan"), confident_mistakes=0)
    preds = probs.argmax(axis=1)
    wrong = preds != labels
    return Score(
        accuracy=float((~wrong).mean()),
        confident_mistakes=int((wrong & (probs.max(axis=1) >= CONFIDENT)).sum()),
    )


@dataclass(frozen=True)
class GateRow:
    benchmark: str
    n: int
    champion: Score
    challenger: Score
    rule: str
    ok: bool

    @property
    def change_points(self) -> float:
        return 100.0 * (self.challenger.accuracy - self.champion.accuracy)

    def as_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "n": self.n,
            "champion": round(self.champion.accuracy, 6),
            "challenger": round(self.challenger.accuracy, 6),
            "change_points": round(self.change_points, 3),
            "champion_confident_mistakes": self.champion.confident_mistakes,
            "challenger_confident_mistakes": self.challenger.confident_mistakes,
            "rule": self.rule,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class GateResult:
    rows: list[GateRow]

    @property
    def passed(self) -> bool:
        return all(row.ok for row in self.rows)

    @property
    def reason(self) -> str:
        failed = [row for row in self.rows if not row.ok]
        if not failed:
            return "the gate passed: " + "; ".join(_summary(row) for row in self.rows)
        return "the gate refused: " + "; ".join(_summary(row) for row in failed)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reason": self.reason,
            "confident": CONFIDENT,
            "rows": [row.as_dict() for row in self.rows],
        }

    def table(self) -> str:
        lines = [
            f"{'benchmark':<17} {'n':>6} {'champion':>9} {'challenger':>10} {'change':>7}"
            f"  {'conf. mistakes':>14}  rule",
        ]
        for row in self.rows:
            mistakes = f"{row.champion.confident_mistakes} -> {row.challenger.confident_mistakes}"
            lines.append(
                f"{row.benchmark:<17} {row.n:>6} {_pct(row.champion.accuracy):>9} "
                f"{_pct(row.challenger.accuracy):>10} {row.change_points:>+7.2f}  {mistakes:>14}"
                f"  {row.rule}: {'ok' if row.ok else 'FAILED'}"
            )
        return "\n".join(lines)


def _pct(value: float) -> str:
    return "n/a" if np.isnan(value) else f"{100.0 * value:.2f}%"


def _summary(row: GateRow) -> str:
    return (
        f"{row.benchmark} {_pct(row.champion.accuracy)} -> {_pct(row.challenger.accuracy)} "
        f"({row.rule})"
    )


def feedback_row(champion: np.ndarray, challenger: np.ndarray, labels: np.ndarray) -> GateRow:
    """Challenger better on the holdout, or equal with fewer confident mistakes."""
    a, b = _score(champion, labels), _score(challenger, labels)
    if len(labels) == 0:
        ok = False  # nothing to show an improvement on
    else:
        ok = b.accuracy > a.accuracy + _EPS or (
            abs(b.accuracy - a.accuracy) <= _EPS and b.confident_mistakes < a.confident_mistakes
        )
    return GateRow(FEEDBACK, len(labels), a, b, "better, or equal with fewer confident", ok)


def benchmark_row(
    name: str, champion: np.ndarray, challenger: np.ndarray, labels: np.ndarray
) -> GateRow:
    a, b = _score(champion, labels), _score(challenger, labels)
    allowed = MAX_DROP[name]
    ok = 100.0 * (a.accuracy - b.accuracy) <= allowed + _EPS
    return GateRow(name, len(labels), a, b, f"drop <= {allowed} pt", ok)


def run_gate(
    champion: torch.nn.Module,
    challenger: torch.nn.Module,
    holdout_images: np.ndarray,
    holdout_labels: np.ndarray,
    benchmarks: list[Benchmark],
    progress: bool = False,
) -> GateResult:
    rows = [
        feedback_row(
            predict_proba(champion, holdout_images),
            predict_proba(challenger, holdout_images),
            holdout_labels,
        )
    ]
    for bench in tqdm(benchmarks, desc="gate", disable=not progress, file=sys.stderr):
        rows.append(
            benchmark_row(
                bench.name,
                predict_proba(champion, bench.images),
                predict_proba(challenger, bench.images),
                bench.labels,
            )
        )
    return GateResult(rows)
