"""Why the model gave its answer: integrated gradients on the 28x28 input, and a picture of it.

Integrated gradients (Sundararajan et al., 2017) credits each input pixel with its share of the
change in one digit's logit between a baseline and the drawing:

    attribution_i = (x_i - b_i) * integral over a in [0, 1] of d logit / d x_i at b + a (x - b)

The baseline is a black field (no ink), the input MNIST was drawn on, so a pixel's attribution is
what its ink did for (positive) or against (negative) the digit, and black pixels get none.

The time goes into the network: a forward and a backward pass per point of the path (all points
in ONE batch). So the points are few and placed where the integrand needs them: along the path
the digit's logit changes most in the first tenth (the first faint ink switches the network's
units on), then slowly. The integral is split at SPLIT with Gauss-Legendre points on each part:
16 points so placed match a 2,048-point integral about as well as 32 plain Gauss-Legendre points
do, and leave a smaller completeness gap (sum of attributions vs logit(x) - logit(baseline):
`convergence_delta`, the method's own check). scripts/bench_explain.py measures all of it. The
network runs as a `PreparedModel`: batch norm folded into the convolutions and no parameter
gradients, the same function for less work.

Nothing here runs on the predict path: explanations are computed on demand.
"""

from __future__ import annotations

import io
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Final

import numpy as np
import torch
from PIL import Image
from torch import nn

from digit_predictor.ml.models import inference_copy
from digit_predictor.ml.preprocess import Preprocessed, to_model_tensor

METHOD: Final = "integrated_gradients"
BASELINE: Final = "black"
# 16 points in two panels: about 15% (L1) from a 2,048-point integral, correlation about 0.99;
# a few tens of milliseconds on one CPU thread.
DEFAULT_STEPS = 16
MAX_STEPS = 256
# Where the path's two panels meet, as a fraction of the way from the baseline to the drawing.
SPLIT = 0.1

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


def gauss_legendre(points: int, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [lo, hi]."""
    nodes, weights = np.polynomial.legendre.leggauss(points)
    half = (hi - lo) / 2.0
    return lo + (nodes + 1.0) * half, weights * half


def quadrature(steps: int) -> tuple[np.ndarray, np.ndarray]:
    """`steps` points and weights on [0, 1]: half of them on [0, SPLIT], half on [SPLIT, 1].

    One point (nothing to split) is the midpoint rule. The weights sum to 1 in every case, so
    integrated gradients is exact for a linear model at any step count.
    """
    if steps < 2:
        return gauss_legendre(steps, 0.0, 1.0)
    near = gauss_legendre(steps // 2, 0.0, SPLIT)
    far = gauss_legendre(steps - steps // 2, SPLIT, 1.0)
    return np.concatenate([near[0], far[0]]), np.concatenate([near[1], far[1]])


class PreparedModel:
    """A model made ready for gradients on its input: the same function, less work per point.

    An eval-mode batch norm right after a convolution is an affine map, folded into that
    convolution's weights; the parameters are a frozen copy, so autograd computes no gradients
    for them and the served model is never touched (it keeps answering other threads). The
    baseline's logits are computed once. A fold that does not reproduce the model's logits (to
    float rounding) is dropped and the model is used as it is.
    """

    FOLD_TOLERANCE = 1e-3  # logits; the float32 rounding of a fold is about 1e-5

    def __init__(self, model: nn.Module, *, fold: bool = True) -> None:
        if model.training:
            raise ValueError("the model must be in eval mode")
        self.temperature = _temperature(model)
        with torch.inference_mode():
            self.baseline_logits = model(black_baseline())[0].double().clone()
        # A prepared copy never refers to its model: `prepared` keys its cache weakly on it.
        self.net = model
        self.folded = False
        if fold:
            self.net = inference_copy(model)
            probe = torch.cat([black_baseline(), _probe()])
            with torch.inference_mode():
                same = torch.allclose(self.net(probe), model(probe), atol=self.FOLD_TOLERANCE)
            self.folded = same
            if not same:
                self.net = inference_copy(model, fold_batch_norms=False)


def _probe() -> torch.Tensor:
    """A few fixed random inputs on which a folded copy must agree with its model."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (4, 28, 28), generator=generator, dtype=torch.uint8).numpy()
    return torch.stack([to_model_tensor(image) for image in pixels])


_prepared: weakref.WeakKeyDictionary[nn.Module, PreparedModel] = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


def prepared(model: nn.Module) -> PreparedModel:
    """The PreparedModel of a model whose weights no longer change (a served one), made once.

    Kept as long as the model lives. A model still being trained must not be passed here: its
    prepared copy would keep the weights it had then.
    """
    with _prepared_lock:
        ready = _prepared.get(model)
        if ready is None:
            ready = _prepared[model] = PreparedModel(model)
        return ready


def integrated_gradients(
    model: nn.Module | PreparedModel,
    x: torch.Tensor,
    digit: int,
    *,
    steps: int = DEFAULT_STEPS,
) -> Attribution:
    """Attributions of `digit`'s logit to each pixel of one normalised (1, 1, 28, 28) input.

    A plain module (in eval mode: batch norm then treats the path's points independently) is
    used as it is; `prepared(model)` is the faster form of a served model. Only the input's
    gradient is computed, never the parameters', so the model can serve other threads meanwhile.
    """
    if tuple(x.shape) != (1, 1, 28, 28):
        raise ValueError(f"expected one input of shape (1, 1, 28, 28), got {tuple(x.shape)}")
    if not 0 <= digit <= 9:
        raise ValueError(f"digit must be 0-9, got {digit}")
    if not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be 1-{MAX_STEPS}, got {steps}")
    ready = model if isinstance(model, PreparedModel) else PreparedModel(model, fold=False)
    x = x.to(dtype=torch.float32, device="cpu")
    base = black_baseline()
    nodes, weights = quadrature(steps)
    alphas = torch.tensor(nodes, dtype=torch.float32)
    # The path's points, then the input itself (for its logits): one batch, one backward pass.
    path = base + alphas.view(-1, 1, 1, 1) * (x - base)
    # enable_grad: a caller's inference_mode / no_grad must not silently zero the gradients.
    with torch.enable_grad():
        batch = torch.cat([path, x]).requires_grad_(True)
        logits = ready.net(batch)
        (grads,) = torch.autograd.grad(logits[:steps, digit].sum(), batch)
    weighted = grads[:steps, 0].double() * torch.from_numpy(weights).view(-1, 1, 1)
    values = ((x - base)[0, 0].double() * weighted.sum(dim=0)).numpy()
    return Attribution(
        digit=digit,
        values=values,
        input_logits=logits[steps].detach().double().numpy(),
        baseline_logit=float(ready.baseline_logits[digit]),
        steps=steps,
        temperature=ready.temperature,
    )


def _temperature(model: torch.nn.Module) -> float:
    """The calibration temperature in the model's trust head (1 when it has none fitted)."""
    trust = getattr(model, "trust", None)
    temperature = getattr(trust, "temperature", None)
    return float(temperature) if isinstance(temperature, torch.Tensor) else 1.0


def explain(
    model: nn.Module | PreparedModel,
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
