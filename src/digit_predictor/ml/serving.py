"""The classifier the api serves: the model's exported ONNX graph under ONNX Runtime, no torch.

An api worker that imported torch would weigh about 330 MiB before its first request (torch
alone is 263 MiB, docs/profile.md); with ONNX Runtime it is about a third of that, and a batch
runs in less CPU. The graph (ml/export.py) holds the whole answer: the CNN and its trust head.
Its weights stay beside it, for explanations, which need torch's gradients and load it only
when one is asked for (api/explainer.py).
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from digit_predictor.ml.card import CardError, ModelCard, graph_beside

log = logging.getLogger(__name__)

GRAPH_INPUT = "x"  # float32 (N, 1, 28, 28), normalised
GRAPH_OUTPUTS = ("logits", "ood_score", "is_digit")  # calibrated logits; (N,) float; (N,) bool
EXPORT_TIMEOUT_S = 300.0
HOW_TO_TRAIN = "train one with `python -m digit_predictor.ml.train` (writes model/saved_model/)"


class ModelNotFoundError(FileNotFoundError):
    """The weights file or its model card is missing."""


class ModelLoadError(RuntimeError):
    """The weights or the card exist but do not fit together (or are not what they claim)."""


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class Assessment:
    """Calibrated probabilities and how much the drawings look like a digit at all."""

    probabilities: np.ndarray  # (N, 10) float64, each row summing to 1
    ood_score: np.ndarray  # (N,) float64 in 0..1, higher = less like a digit
    is_digit: np.ndarray  # (N,) bool


def read_weights(weights_path: str | os.PathLike[str]) -> tuple[ModelCard, bytes]:
    """Weights from a file and the model card beside them, checked against each other: what
    the api (here) and training, evaluation and explanations (ml/inference.py) load."""
    path = Path(weights_path)
    card_path = ModelCard.path_in(path.parent)
    if not path.is_file():
        raise ModelNotFoundError(f"model weights not found at {path}; {HOW_TO_TRAIN}")
    if not card_path.is_file():
        raise ModelNotFoundError(
            f"model card not found at {card_path} (it must sit beside the weights); {HOW_TO_TRAIN}"
        )
    try:
        card = ModelCard.read(path.parent)
    except CardError as exc:
        raise ModelLoadError(str(exc)) from exc
    weights = path.read_bytes()
    if card.weights_sha256 and _sha256(weights) != card.weights_sha256:
        raise ModelLoadError(
            f"{path} does not match its model card (sha256 differs); "
            "ship the weights and the card from the same training run"
        )
    return card, weights


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (rows sum to 1 within rounding)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=1, keepdims=True))
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


def export_in_child(arch: str, weights: bytes, *, timeout_s: float = EXPORT_TIMEOUT_S) -> bytes:
    """The ONNX graph of weights that came without one, exported by a child process (which
    imports torch and exits, so this process never holds torch)."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "digit_predictor.ml.export", "--arch", arch],
            input=weights,
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModelLoadError(f"cannot export the {arch!r} weights to ONNX: {exc}") from exc
    if done.returncode != 0:
        last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no message"]
        raise ModelLoadError(f"cannot export the {arch!r} weights to ONNX: {last[0]}")
    return done.stdout


class ServingClassifier:
    """A trained classifier as an ONNX Runtime session; `assess` may be called from any thread."""

    def __init__(
        self, graph: bytes, card: dict[str, Any], *, arch: str, weights: bytes, threads: int = 1
    ) -> None:
        options = onnxruntime.SessionOptions()
        # One thread per call: the api's concurrency is its processes (docs/api.md).
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        try:
            self._session = onnxruntime.InferenceSession(
                graph, options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # ORT raises its own exception types for a broken graph
            raise ModelLoadError(f"cannot load the ONNX graph: {exc}") from exc
        names = tuple(out.name for out in self._session.get_outputs())
        if names != GRAPH_OUTPUTS:
            raise ModelLoadError(f"the ONNX graph answers {names}, expected {GRAPH_OUTPUTS}")
        self.card = card
        self.version: str = str(card["version"])
        self.arch = arch
        self.weights = weights  # the state dict, for explanations (api/explainer.py)
        self.graph = graph  # kept for the registry, when it was exported here
        self._warm = threading.Event()

    @classmethod
    def load(cls, weights_path: str | os.PathLike[str], *, threads: int = 1) -> ServingClassifier:
        """The shipped model: weights, their card and their graph, side by side. A graph that
        is missing or not the card's (weights retrained by older code) is exported anew."""
        card, weights = read_weights(weights_path)
        graph = graph_beside(Path(weights_path), card.onnx_sha256)
        if graph is None:
            log.warning("no ONNX graph of these weights beside them; exporting one")
        return cls.from_weights(card.architecture, weights, card.to_dict(), graph, threads=threads)

    @classmethod
    def from_weights(
        cls,
        arch: str,
        weights: bytes,
        card: dict[str, Any],
        graph: bytes | None = None,
        *,
        threads: int = 1,
    ) -> ServingClassifier:
        """A classifier from its weights and their graph (exported here when None)."""
        if graph is None:
            graph = export_in_child(arch, weights)
        return cls(graph, card, arch=arch, weights=weights, threads=threads)

    def assess(self, batch: np.ndarray) -> Assessment:
        """(N, 1, 28, 28) normalised float32 -> calibrated probabilities, ood_score, is_digit."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected a batch of shape (N, 1, 28, 28), got {batch.shape}")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        logits, ood_score, is_digit = self._session.run(None, {GRAPH_INPUT: x})
        return Assessment(
            probabilities=softmax(logits),
            ood_score=np.asarray(ood_score, dtype=np.float64),
            is_digit=np.asarray(is_digit, dtype=bool),
        )

    def predict_proba(self, batch: np.ndarray) -> np.ndarray:
        return self.assess(batch).probabilities

    def warm_up(self) -> None:
        """Run one dummy batch so the first real request does not pay for allocator set-up."""
        self.assess(np.zeros((1, 1, 28, 28), dtype=np.float32))
        self._warm.set()

    @property
    def is_warm(self) -> bool:
        return self._warm.is_set()
