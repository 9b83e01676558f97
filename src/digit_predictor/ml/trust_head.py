"""The trust parameters that travel inside a model's state dict: a temperature for calibrated
probabilities and a non-digit detector, as buffers of a `trust` submodule of the network.

Buffers only (no parameters), so training the CNN never touches them and its optimiser never
sees them; `fit_trust` (ml/trust.py) fills them on top of trained weights. A head that was never
fitted (`fitted` is 0, e.g. weights from before the trust head existed) answers with
temperature 1 and a documented fallback: ood_score = 1 - max softmax, and every drawing is
taken as a digit, since an unfitted detector has no threshold worth trusting.

The detector reads, for one drawing: the network's penultimate features, its logits, the
Mahalanobis distance of the features to the nearest digit class, and three facts about the 28x28
input (ink share, height and width of the ink): a drawing wider than tall is rarely one digit.
A small MLP, trained with outlier exposure (ml/trust.py), turns them into P(not a digit).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from digit_predictor.ml.preprocess import MNIST_MEAN, MNIST_STD

HIDDEN = 32
IMAGE_STATS = 3
SCORE_STATS = 4  # min Mahalanobis distance, energy, max logit, max calibrated probability
INK_LEVEL = 0.2


class TrustOutput(NamedTuple):
    logits: torch.Tensor  # (N, 10) calibrated logits: raw / temperature
    ood_score: torch.Tensor  # (N,) P(not a digit) in 0..1; higher = less like a digit
    is_digit: torch.Tensor  # (N,) bool


def image_stats(x: torch.Tensor) -> torch.Tensor:
    """(N, 1, 28, 28) normalised input -> (N, 3): ink share, ink height, ink width (0..1)."""
    ink = (x[:, 0] * MNIST_STD + MNIST_MEAN) > INK_LEVEL
    size = ink.shape[-1]
    idx = torch.arange(size, device=x.device)

    def extent(mask: torch.Tensor) -> torch.Tensor:  # (N, 28) -> (N,)
        first = torch.where(mask, idx, size).min(dim=1).values
        last = torch.where(mask, idx, -1).max(dim=1).values
        return (last - first + 1).clamp(min=0).float() / size

    share = ink.float().mean(dim=(1, 2))
    return torch.stack([share, extent(ink.any(dim=2)), extent(ink.any(dim=1))], dim=1)


class TrustHead(nn.Module):
    fitted: torch.Tensor  # 0 or 1
    temperature: torch.Tensor
    threshold: torch.Tensor  # ood_score at or above which a drawing is not a digit
    class_means: torch.Tensor  # (10, D) penultimate features per digit
    precision: torch.Tensor  # (D, D) inverse of the shared covariance
    in_mean: torch.Tensor  # the detector's input standardisation
    in_scale: torch.Tensor
    w1: torch.Tensor  # the detector MLP: inputs -> hidden (ReLU) -> log-odds of not a digit
    b1: torch.Tensor
    w2: torch.Tensor
    b2: torch.Tensor

    def __init__(self, feature_dim: int, hidden: int = HIDDEN) -> None:
        super().__init__()
        inputs = feature_dim + 10 + SCORE_STATS + IMAGE_STATS
        self.feature_dim = feature_dim
        self.register_buffer("fitted", torch.zeros(()))
        self.register_buffer("temperature", torch.ones(()))
        self.register_buffer("threshold", torch.full((), 0.5))
        self.register_buffer("class_means", torch.zeros(10, feature_dim))
        self.register_buffer("precision", torch.eye(feature_dim))
        self.register_buffer("in_mean", torch.zeros(inputs))
        self.register_buffer("in_scale", torch.ones(inputs))
        self.register_buffer("w1", torch.zeros(inputs, hidden))
        self.register_buffer("b1", torch.zeros(hidden))
        self.register_buffer("w2", torch.zeros(hidden))
        self.register_buffer("b2", torch.zeros(()))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item() > 0.5)

    def mahalanobis(self, features: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N,) squared distance to the nearest class mean under the shared covariance."""
        diff = features[:, None, :] - self.class_means[None]  # (N, 10, D)
        dist = torch.einsum("ncd,de,nce->nc", diff, self.precision, diff)
        return dist.min(dim=1).values

    def inputs(self, features: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """What the detector reads, before standardisation: (N, inputs)."""
        scaled = logits / self.temperature
        energy = torch.logsumexp(scaled, dim=1)
        stats = torch.stack(
            [
                torch.log1p(self.mahalanobis(features)),
                energy,
                scaled.max(dim=1).values,
                torch.softmax(scaled, dim=1).max(dim=1).values,
            ],
            dim=1,
        )
        return torch.cat([features, scaled, stats, image_stats(x)], dim=1)

    def detector_logit(self, z: torch.Tensor) -> torch.Tensor:
        """Standardised inputs -> log-odds of not a digit."""
        h = torch.relu(((z - self.in_mean) / self.in_scale) @ self.w1 + self.b1)
        out: torch.Tensor = h @ self.w2 + self.b2
        return out

    def forward(self, features: torch.Tensor, logits: torch.Tensor, x: torch.Tensor) -> TrustOutput:
        scaled = logits / self.temperature
        if not self.is_fitted:
            score = 1.0 - torch.softmax(scaled, dim=1).max(dim=1).values
            return TrustOutput(scaled, score, torch.ones_like(score, dtype=torch.bool))
        score = torch.sigmoid(self.detector_logit(self.inputs(features, logits, x)))
        return TrustOutput(scaled, score, score < self.threshold)


def features_and_logits(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward pass that keeps what the detector reads: same logits as `model(x)`.

    Features: the average of each stage's map (after every max-pool of `model.features`), then
    the penultimate features. Both architectures of ml/models.py are a `features` Sequential
    and a `classifier` Sequential whose last layer maps the penultimate features to logits."""
    stages = model.features
    classifier = model.classifier
    assert isinstance(stages, nn.Sequential) and isinstance(classifier, nn.Sequential)
    taps = []
    h = x
    for layer in stages:
        h = layer(h)
        if isinstance(layer, nn.MaxPool2d):
            taps.append(h.mean(dim=(2, 3)))
    for layer in list(classifier)[:-1]:
        h = layer(h)
    logits: torch.Tensor = classifier[-1](h)
    return torch.cat([*taps, h], dim=1), logits


def feature_dim(model: nn.Module) -> int:
    with torch.no_grad():
        was_training = model.training
        features, _ = features_and_logits(model.eval(), torch.zeros(1, 1, 28, 28))
        model.train(was_training)
    return int(features.shape[1])


def attach(model: nn.Module) -> TrustHead:
    """Give a network an (unfitted) trust head, so its state dict carries the trust buffers."""
    head = TrustHead(feature_dim(model))
    model.add_module("trust", head)
    return head


def head_of(model: nn.Module) -> TrustHead:
    head = getattr(model, "trust", None)
    if not isinstance(head, TrustHead):
        head = attach(model)
    return head


def assess(model: nn.Module, x: torch.Tensor) -> TrustOutput:
    """Calibrated logits, ood_score and is_digit for a batch of normalised (N, 1, 28, 28)."""
    features, logits = features_and_logits(model, x)
    result: TrustOutput = head_of(model)(features, logits, x)
    return result


def load_state(model: nn.Module, state: dict[str, torch.Tensor]) -> bool:
    """Load weights; a state dict from before the trust head (no `trust.*` keys) still loads,
    its head left unfitted. Returns whether the state carried trust parameters."""
    head_of(model)
    has_trust = any(key.startswith("trust.") for key in state)
    if has_trust:
        model.load_state_dict(state)
        return True
    missing, unexpected = model.load_state_dict(state, strict=False)
    wrong = [k for k in missing if not k.startswith("trust.")] + list(unexpected)
    if wrong:
        raise RuntimeError(f"state dict does not fit the network: {', '.join(wrong[:5])}")
    return False
