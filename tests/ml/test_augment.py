"""Augmented digits come back re-normalised exactly as the preprocessing would leave them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from digit_predictor.ml.augment import AugmentConfig, augment_batch, renormalise
from digit_predictor.ml.data import load_split

from .conftest import centre_of_mass, ink_box


def mnist_batch(mnist_dir: Path, n: int = 64) -> torch.Tensor:
    test = load_split(mnist_dir, "t10k")
    return torch.from_numpy(test.images[:n]).float().div(255.0).unsqueeze(1)


def test_augmented_digits_are_centred_and_fit_20x20(mnist_dir: Path) -> None:
    batch = mnist_batch(mnist_dir)
    out = augment_batch(batch, AugmentConfig(prob=1.0), torch.Generator().manual_seed(0))
    assert out.shape == batch.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    changed = (out - batch).abs().flatten(1).amax(dim=1) > 0.2
    assert changed.float().mean() > 0.9  # it really augments
    for image in (out[:, 0].numpy() * 255).astype(np.uint8):
        cy, cx = centre_of_mass(image)
        assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5
        assert max(ink_box(image)) <= 21


def test_augmentation_is_deterministic_for_a_seed(mnist_dir: Path) -> None:
    batch = mnist_batch(mnist_dir, 16)
    config = AugmentConfig()
    a = augment_batch(batch, config, torch.Generator().manual_seed(7))
    b = augment_batch(batch, config, torch.Generator().manual_seed(7))
    c = augment_batch(batch, config, torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_prob_zero_leaves_the_batch_alone(mnist_dir: Path) -> None:
    batch = mnist_batch(mnist_dir, 8)
    out = augment_batch(batch, AugmentConfig(prob=0.0), torch.Generator().manual_seed(0))
    assert torch.equal(out, batch)


def test_renormalise_recentres_a_shifted_small_digit(mnist_dir: Path) -> None:
    batch = mnist_batch(mnist_dir, 8)
    small = torch.nn.functional.interpolate(batch, size=(14, 14), mode="area")
    moved = torch.zeros_like(batch)
    moved[:, :, 0:14, 14:28] = small  # half size, top-right corner
    out = renormalise(moved)
    for i in range(len(batch)):
        image = (out[i, 0].numpy() * 255).astype(np.uint8)
        cy, cx = centre_of_mass(image)
        assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5
        assert max(ink_box(image)) >= 17  # scaled back up from about 10 pixels
        # Back to (nearly) the original digit.
        assert float((out[i] - batch[i]).abs().mean()) < 0.08


def test_empty_images_stay_empty() -> None:
    out = renormalise(torch.zeros(3, 1, 28, 28))
    assert torch.equal(out, torch.zeros(3, 1, 28, 28))
