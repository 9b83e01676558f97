"""Load the shipped weights with their model card and answer probabilities, thread-safely."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch

from digit_predictor.ml.card import CardError, ModelCard
from digit_predictor.ml.models import build_model

CARD_NAME = ModelCard.FILE_NAME
HOW_TO_TRAIN = "train one with `python -m digit_predictor.ml.train` (writes model/saved_model/)"


class ModelNotFoundError(FileNotFoundError):
    """The weights file or its model card is missing."""


class ModelLoadError(RuntimeError):
    """The weights or the card exist but do not fit together (or are not what they claim)."""


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Classifier:
    """A trained digit classifier in eval mode; `predict_proba` may be called from any thread."""

    def __init__(self, model: torch.nn.Module, card: dict[str, Any]) -> None:
        self.model = model.eval()
        self.card = card
        self.version: str = str(card["version"])
        self._warm = threading.Event()

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Classifier:
        weights = Path(path)
        card_path = weights.with_name(CARD_NAME)
        if not weights.is_file():
            raise ModelNotFoundError(f"model weights not found at {weights}; {HOW_TO_TRAIN}")
        if not card_path.is_file():
            raise ModelNotFoundError(
                f"model card not found at {card_path} (it must sit beside the weights); "
                f"{HOW_TO_TRAIN}"
            )
        try:
            card = ModelCard.read(weights.parent)
        except CardError as exc:
            raise ModelLoadError(str(exc)) from exc
        if card.weights_sha256 and sha256_of(weights) != card.weights_sha256:
            raise ModelLoadError(
                f"{weights} does not match its model card (sha256 differs); "
                "ship the weights and the card from the same training run"
            )
        return cls.from_weights(
            card.architecture, weights.read_bytes(), card.to_dict(), origin=str(weights)
        )

    @classmethod
    def from_weights(
        cls, arch: str, weights: bytes, card: dict[str, Any], *, origin: str = "weights"
    ) -> Classifier:
        """A classifier from state-dict bytes (a file's, or the model registry's)."""
        model = build_model(arch)
        try:
            # weights_only: a weights file must never be able to run code when loaded.
            state = torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except Exception as exc:
            raise ModelLoadError(f"cannot load {origin} as {arch!r}: {exc}") from exc
        return cls(model, card)

    def predict_proba(self, batch: torch.Tensor) -> np.ndarray:
        """(N, 1, 28, 28) normalised tensors -> (N, 10) probabilities, each row summing to 1."""
        if batch.ndim != 4 or tuple(batch.shape[1:]) != (1, 28, 28):
            raise ValueError(f"expected a batch of shape (N, 1, 28, 28), got {tuple(batch.shape)}")
        with torch.inference_mode():
            logits = self.model(batch.to(dtype=torch.float32, device="cpu"))
            probs = torch.softmax(logits.double(), dim=1)
        return np.asarray(probs.numpy(), dtype=np.float64)

    def warm_up(self) -> None:
        """Run one dummy batch so the first real request does not pay for allocator set-up."""
        self.predict_proba(torch.zeros(1, 1, 28, 28))
        self._warm.set()

    @property
    def is_warm(self) -> bool:
        return self._warm.is_set()
