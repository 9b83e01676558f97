"""The CNN architectures, by name. Every model takes (N, 1, 28, 28) and returns (N, 10) logits."""

from __future__ import annotations

import copy
from collections.abc import Callable
from functools import partial

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


class SeedCNN(nn.Module):
    """The original design, kept exactly: two convs, max-pool, dense 128, dropout 0.5."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, kernel_size=3),
            nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=3),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(64 * 12 * 12, 128),
            nn.ReLU(),
            nn.Dropout(0.5),
            nn.Linear(128, 10),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class BnCNN(nn.Module):
    """The shipped default: batch-normalised 3x3 convs in three stages, global average pool.

    Channels double as the resolution halves; most parameters sit at 7x7 where they are cheap,
    so it trains on two CPU cores in minutes and answers in well under 2 ms.
    """

    def __init__(self, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        w1, w2, w3 = width, 2 * width, 4 * width
        self.features = nn.Sequential(
            *_conv_bn(1, w1),
            *_conv_bn(w1, w1),
            nn.MaxPool2d(2),  # 14x14
            *_conv_bn(w1, w2),
            *_conv_bn(w2, w2),
            nn.MaxPool2d(2),  # 7x7
            *_conv_bn(w2, w3),
            *_conv_bn(w3, w3),
            nn.AdaptiveAvgPool2d(1),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(w3, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.classifier(self.features(x))
        return out


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "seed": SeedCNN,
    "bn_cnn": BnCNN,
    # 1.5x the channels (24, 48, 96): 2.2x the parameters, under 1 ms per image.
    "bn_cnn_wide": partial(BnCNN, width=24),
}

DEFAULT_ARCHITECTURE = "bn_cnn_wide"


def build_model(name: str) -> nn.Module:
    """A fresh network with an unfitted trust head (buffers only: temperature, non-digit
    detector), so the trust parameters travel in its state dict; see ml/trust_head.py."""
    from digit_predictor.ml.trust_head import attach

    try:
        factory = ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(ARCHITECTURES))
        raise ValueError(f"unknown architecture {name!r}; choose one of: {known}") from None
    model = factory()
    attach(model)
    return model


def inference_copy(model: nn.Module, *, fold_batch_norms: bool = True) -> nn.Module:
    """An eval-mode copy of `model` without parameter gradients, for answering and explaining;
    the original is untouched. With `fold_batch_norms`, each Conv2d -> BatchNorm2d pair of a
    Sequential becomes one convolution (an eval-mode batch norm is an affine map): the same
    function, to float rounding, for less work."""
    net = copy.deepcopy(model).eval()
    for module in net.modules():
        if not fold_batch_norms or not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            conv, norm = module[i], module[i + 1]
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(conv, norm)
                module[i + 1] = nn.Identity()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
