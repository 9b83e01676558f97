"""The two tensor steps training, evaluation and retraining share: normalise, predict in batches."""

from __future__ import annotations

import numpy as np
import torch

from digit_predictor.ml.preprocess import MNIST_MEAN, MNIST_STD

PREDICT_BATCH = 1000


def normalise(images01: torch.Tensor) -> torch.Tensor:
    """Pixels in 0..1 -> what the network was trained on: (x - MNIST mean) / MNIST std."""
    return (images01 - MNIST_MEAN) / MNIST_STD


def to_unit(images_u8: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) white-on-black -> float (N, 1, 28, 28) in 0..1."""
    return torch.from_numpy(np.ascontiguousarray(images_u8)).float().div_(255.0).unsqueeze(1)


def predict_proba(
    model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch: int = PREDICT_BATCH
) -> np.ndarray:
    """Probabilities (N, 10) for uint8 (N, 28, 28) images or float (N, 1, 28, 28) in 0..1.

    The model is put in eval mode: batch-norm statistics must not follow the data scored.
    """
    images01 = to_unit(images) if isinstance(images, np.ndarray) else images
    model.eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(images01), batch):
            logits = model(normalise(images01[start : start + batch]))
            out.append(torch.softmax(logits.double(), dim=1).numpy())
    return np.concatenate(out) if out else np.empty((0, 10), dtype=np.float64)


def predict(
    model: torch.nn.Module, images: np.ndarray | torch.Tensor, batch: int = PREDICT_BATCH
) -> np.ndarray:
    """The predicted digit (N,) int64 for each image, in batches."""
    digits: np.ndarray = predict_proba(model, images, batch).argmax(axis=1).astype(np.int64)
    return digits
