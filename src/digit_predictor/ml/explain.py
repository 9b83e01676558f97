"""Why the model gave its answer: integrated gradients on the 28x28 input, and a picture of it.

Integrated gradients (Sundararajan et al., 2017) credits each input pixel with its share of the
change in one digit's logit between a baseline and the drawing:

    attribution_i = (x_i - b_i) * integral over a in [0, 1] of d logit / d x_i at b + a (x - b)

The baseline is a black field (no ink), the input MNIST was drawn on, so a pixel's attribution is
what its ink did for (positive) or against (negative) the digit, and black pixels get none. The
integral is taken with Gauss-Legendre quadrature: every point of the path goes through the network
in ONE batched forward and ONE backward pass (the slow part of naive implementations is a pass per
step). The attributions sum to logit(x) - logit(baseline) up to `convergence_delta`, the check the
method comes with.

Nothing here runs on the predict path: explanations are computed on demand.
"""

from __future__ import annotations

import io
import time
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
from PIL import Image

from digit_predictor.ml.preprocess import Preprocessed, to_model_tensor

METHOD: Final = "integrated_gradients"
BASELINE: Final = "black"
# 32 Gauss-Legendre points: within about 5-10% (L1) of a 1,000-step integral on canvas drawings,
# in tens of milliseconds on one CPU thread (scripts/bench_explain.py measures both).
DEFAULT_STEPS = 32
MAX_STEPS = 256

# Overlay colours: red for ink that speaks for the digit, blue for ink that speaks against it.
FOR_COLOUR = np.array([255.0, 40.0, 20.0])
AGAINST_COLOUR = np.array([30.0, 140.0, 255.0])
# The drawing stays visible under the colours, dimmed so that both colours read on it.
INPUT_BRIGHTNESS = 0.55
# Colour strength is |attribution| over this quantile of the non-zero |attributions|: one
# extreme pixel then does not wash out the rest of the map.
SCALE_QUANTILE = 0.99
MAX_OVERLAY_SCALE = 20
# Pixel-level gradients of a ReLU network alternate in sign from one pixel to the next; the picture
# spreads each pixel's value over its neighbours (3x3 binomial) so the parts of the stroke that
# mattered read at a glance. The numbers stay per pixel.
SMOOTHING = np.array([1.0, 2.0, 1.0]) / 4.0


@dataclass(frozen=True)
class Attribution:
    digit: int  # the digit whose logit is explained
    values: np.ndarray  # float64 (28, 28): each pixel's share of logit - baseline_logit
    input_logits: np.ndarray  # float64 (10,): every digit's logit for the drawing
    baseline_logit: float  # the digit's logit for the black baseline
    steps: int
    # The model's calibration temperature: `probability` is then the calibrated one the api serves.
    temperature: float = 1.0

    @property
    def logit(self) -> float:
        return float(self.input_logits[self.digit])

    @property
    def probability(self) -> float:
        """P(digit) for the drawing, calibrated as served: softmax(logits / temperature)."""
        scaled = self.input_logits / self.temperature
        shifted = np.exp(scaled - scaled.max())
        return min(max(float(shifted[self.digit] / shifted.sum()), 0.0), 1.0)

    @property
    def convergence_delta(self) -> float:
        """sum(values) - (logit - baseline_logit): zero for the exact integral."""
        return float(self.values.sum()) - (self.logit - self.baseline_logit)


@dataclass(frozen=True)
class Explanation:
    attribution: Attribution
    model_input: np.ndarray  # uint8 (28, 28): exactly what the model saw
    latency_ms: float  # integrated gradients only (preprocessing excluded)

    def overlay_png(self, scale: int = 8) -> bytes:
        return overlay_png(self.model_input, self.attribution.values, scale=scale)

    def model_input_png(self) -> bytes:
        return _png(Image.fromarray(np.ascontiguousarray(self.model_input, dtype=np.uint8)))


def black_baseline() -> torch.Tensor:
    """The normalised (1, 1, 28, 28) tensor of an empty (black) 28x28 field.

    Normalised by the same function as drawings, so a black pixel of a drawing equals the
    baseline exactly and gets an attribution of exactly 0.
    """
    return to_model_tensor(np.zeros((28, 28), dtype=np.uint8)).unsqueeze(0)


def _quadrature(steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Gauss-Legendre points and weights on [0, 1]."""
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    alphas = torch.tensor((nodes + 1.0) / 2.0, dtype=torch.float32)
    return alphas, torch.tensor(weights / 2.0, dtype=torch.float64)


def integrated_gradients(
    model: torch.nn.Module,
    x: torch.Tensor,
    digit: int,
    *,
    steps: int = DEFAULT_STEPS,
    baseline: torch.Tensor | None = None,
) -> Attribution:
    """Attributions of `digit`'s logit to each pixel of one normalised (1, 1, 28, 28) input.

    `model` must be in eval mode (batch norm then treats the path's points independently). Its
    parameters are not touched: only the input's gradient is computed, so the model can serve
    other threads meanwhile.
    """
    if tuple(x.shape) != (1, 1, 28, 28):
        raise ValueError(f"expected one input of shape (1, 1, 28, 28), got {tuple(x.shape)}")
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9, got {digit}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1-{MAX_STEPS}, got {steps}")
    if model.training:
        raise ValueError("the model must be in eval mode")
    x = x.to(dtype=torch.float32, device="cpu")
    base = black_baseline() if baseline is None else baseline.to(dtype=torch.float32)
    alphas, weights = _quadrature(steps)
    # The path's points, then the input and the baseline for the completeness check: one batch.
    path = base + alphas.view(-1, 1, 1, 1) * (x - base)
    # enable_grad: a caller's inference_mode / no_grad must not silently zero the gradients.
    with torch.enable_grad():
        batch = torch.cat([path, x, base]).requires_grad_(True)
        logits = model(batch)
        (grads,) = torch.autograd.grad(logits[:steps, digit].sum(), batch)
    mean_grad = (grads[:steps, 0].double() * weights.view(-1, 1, 1)).sum(dim=0)
    values = ((x - base)[0, 0].double() * mean_grad).numpy()
    return Attribution(
        digit=digit,
        values=values,
        input_logits=logits[steps].detach().double().numpy(),
        baseline_logit=float(logits[steps + 1, digit].detach()),
        steps=steps,
        temperature=_temperature(model),
    )


def _temperature(model: torch.nn.Module) -> float:
    """The calibration temperature in the model's trust head (1 when it has none fitted)."""
    trust = getattr(model, "trust", None)
    temperature = getattr(trust, "temperature", None)
    return float(temperature) if isinstance(temperature, torch.Tensor) else 1.0


def explain(
    model: torch.nn.Module,
    pre: Preprocessed,
    digit: int,
    *,
    steps: int = DEFAULT_STEPS,
) -> Explanation:
    """Explain `digit` for a preprocessed drawing (the same preprocessing as serving)."""
    started = time.perf_counter()
    attribution = integrated_gradients(model, pre.tensor.unsqueeze(0), digit, steps=steps)
    return Explanation(
        attribution=attribution,
        model_input=pre.image,
        latency_ms=(time.perf_counter() - started) * 1000.0,
    )


def overlay_png(image: np.ndarray, values: np.ndarray, *, scale: int = 8) -> bytes:
    """The 28x28 input, dimmed, under red (for) and blue (against) attributions, as RGB PNG.

    The values are smoothed over 3x3 pixels first (see SMOOTHING); each pixel is enlarged to
    `scale` x `scale` with hard edges, so a pixel of the picture is a pixel of what the model saw.
    """
    if image.shape != (28, 28) or values.shape != (28, 28):
        raise ValueError("image and values must both be 28x28")
    if not 1 <= scale <= MAX_OVERLAY_SCALE:
        raise ValueError(f"scale must be 1-{MAX_OVERLAY_SCALE}, got {scale}")
    values = smooth(values)
    strength = np.abs(values)
    nonzero = strength[strength > 0]
    top = float(np.quantile(nonzero, SCALE_QUANTILE)) if nonzero.size else 0.0
    alpha = np.clip(strength / top, 0.0, 1.0) if top > 0 else np.zeros_like(strength)
    grey = image.astype(np.float64)[..., None] * INPUT_BRIGHTNESS
    colour = np.where((values >= 0)[..., None], FOR_COLOUR, AGAINST_COLOUR)
    rgb = grey * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    pixels = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    picture = Image.fromarray(pixels).resize((28 * scale, 28 * scale), Image.Resampling.NEAREST)
    return _png(picture)


def _png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def smooth(values: np.ndarray) -> np.ndarray:
    """A separable 3x3 binomial blur with zero padding (what lies outside the field is no ink)."""
    padded = np.pad(np.asarray(values, dtype=np.float64), 1)
    rows = sum(w * padded[i : i + values.shape[0], :] for i, w in enumerate(SMOOTHING))
    out: np.ndarray = sum(w * rows[:, i : i + values.shape[1]] for i, w in enumerate(SMOOTHING))
    return out
