"""Load weights with their model card and answer probabilities in torch, thread-safely: what
training, evaluation, the trust fit and explanations use. The api serves the same network as an
ONNX graph (ml/serving.py), without torch."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digit_predictor.ml.models import build_model, inference_copy
from digit_predictor.ml.serving import Assessment, ModelLoadError, read_weights
from digit_predictor.ml.trust_head import assess, head_of, load_state


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serving_copy(model: torch.nn.Module) -> torch.nn.Module:
    """The network as it answers requests: batch norms folded (models.inference_copy), weights
    in channels-last layout, the layout oneDNN's CPU convolutions work in, so nothing is
    reordered per call. About half the CPU per drawing in a batch (docs/api.md)."""
    fast = inference_copy(model)
    # In place; `memory_format` is documented but missing from torch's type hints.
    fast.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    return fast


class Classifier:
    """A trained digit classifier in eval mode; `predict_proba` may be called from any thread."""

    def __init__(self, model: torch.nn.Module, card: dict[str, Any]) -> None:
        self.model = model.eval()
        self.card = card
        self.version: str = str(card["version"])
        # Weights from before the trust head load with it unfitted: temperature 1, every
        # drawing a digit, ood_score = 1 - max softmax (ml/trust_head.py).
        self.trust_fitted: bool = head_of(model).is_fitted
        self._serving = serving_copy(self.model)
        self._warm = threading.Event()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Classifier:
        card, weights = read_weights(path)
        return cls.from_weights(card.architecture, weights, card.to_dict(), origin=str(path))

    @classmethod
    def from_weights(
        cls, arch: str, weights: bytes, card: dict[str, Any], *, origin: str = "weights"
    ) -> Classifier:
        """A classifier from state-dict bytes (a file's, or the model registry's)."""
        try:
            # An unknown architecture (a registry row from a newer release) is a model that
            # cannot be loaded, like broken weights: the caller keeps serving what it has.
            model = build_model(arch)
        except ValueError as exc:
            raise ModelLoadError(f"cannot load {origin}: {exc}") from exc
        try:
            # weights_only: a weights file must never be able to run code when loaded.
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
            # load_state: weights from before the trust head (no trust.* keys) still load.
            load_state(model, state)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {origin} as {arch!r}: {exc}") from exc
        return cls(model, card)

    def assess(self, batch: torch.Tensor) -> Assessment:
        """(N, 1, 28, 28) normalised tensors -> calibrated probabilities, ood_score, is_digit."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected a batch of shape (N, 1, 28, 28), got {tuple(batch.shape)}")
        with torch.inference_mode():
            x = batch.to(dtype=torch.float32, device="cpu")
            out = assess(self._serving, x.contiguous(memory_format=torch.channels_last))
            probs = torch.softmax(out.logits.double(), dim=1)
        return Assessment(
            probabilities=np.asarray(probs.numpy(), dtype=np.float64),
            ood_score=np.asarray(out.ood_score.double().numpy(), dtype=np.float64),
            is_digit=np.asarray(out.is_digit.numpy(), dtype=bool),
        )

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """(N, 1, 28, 28) normalised tensors -> (N, 10) calibrated probabilities."""
        return self.assess(batch).probabilities

    def warm_up(self) -> None:
        """Run one dummy batch so the first real request does not pay for allocator set-up."""
        self.predict_proba(torch.zeros(1, 1, 28, 28))
        self._warm.set()

    @property
    def is_warm(self) -> bool:
        return self._warm.is_set()
