"""Every architecture maps (N, 1, 28, 28) to (N, 10) logits; the seed design is kept exactly."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from digit_predictor.ml.models import (
    ARCHITECTURES,
    DEFAULT_ARCHITECTURE,
    build_model,
    parameter_count,
)
from digit_predictor.ml.trust_head import TrustHead


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("batch", [1, 5])
def test_output_shape(name: str, batch: int) -> None:
    model = build_model(name).eval()
    with torch.inference_mode():
        out = model(torch.randn(batch, 1, 28, 28))
    assert out.shape == (batch, 10)
    assert torch.isfinite(out).all()


def test_seed_is_the_original_design() -> None:
    model = build_model("seed")
    # The trust head (buffers only, not in the forward pass) is no layer of the design.
    layers = [m for m in model.modules() if not isinstance(m, nn.Sequential | TrustHead)][1:]
    kinds = [type(m).__name__ for m in layers]
    assert kinds == [
        "Conv2d", "ReLU", "Conv2d", "ReLU", "MaxPool2d",
        "Flatten", "Linear", "ReLU", "Dropout", "Linear",
    ]  # fmt: skip
    convs = [m for m in layers if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64]
    dense = [m for m in layers if isinstance(m, nn.Linear)]
    assert [d.out_features for d in dense] == [128, 10]
    dropout = next(m for m in layers if isinstance(m, nn.Dropout))
    assert dropout.p == 0.5
    assert parameter_count(model) == 1_199_882


def test_default_model_fits_the_size_budget() -> None:
    model = build_model(DEFAULT_ARCHITECTURE)
    assert parameter_count(model) * 4 <= 10 * 1024 * 1024
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_unknown_architecture_names_the_choices() -> None:
    with pytest.raises(ValueError, match="bn_cnn"):
        build_model("resnet9000")
