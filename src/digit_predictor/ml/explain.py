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

import threading
import time
import weakref

import numpy as np
import torch
from torch import nn

# The results and their picture live in ml/explanation.py (no torch); named here too, so that
# `explain.X` reaches everything about explanations.
from digit_predictor.ml.explanation import BASELINE as BASELINE
from digit_predictor.ml.explanation import DEFAULT_STEPS as DEFAULT_STEPS
from digit_predictor.ml.explanation import INPUT_BRIGHTNESS as INPUT_BRIGHTNESS
from digit_predictor.ml.explanation import MAX_OVERLAY_SCALE as MAX_OVERLAY_SCALE
from digit_predictor.ml.explanation import MAX_STEPS as MAX_STEPS
from digit_predictor.ml.explanation import METHOD as METHOD
from digit_predictor.ml.explanation import SPLIT as SPLIT
from digit_predictor.ml.explanation import Attribution as Attribution
from digit_predictor.ml.explanation import Explanation as Explanation
from digit_predictor.ml.explanation import gauss_legendre as gauss_legendre
from digit_predictor.ml.explanation import overlay_png as overlay_png
from digit_predictor.ml.explanation import quadrature as quadrature
from digit_predictor.ml.models import inference_copy
from digit_predictor.ml.preprocess import Preprocessed, to_model_tensor


def black_baseline() -> torch.Tensor:
    """The normalised (1, 1, 28, 28) tensor of an empty (black) 28x28 field.

    Normalised by the same function as drawings, so a black pixel of a drawing equals the
    baseline exactly and gets an attribution of exactly 0.
    """
    return to_model_tensor(np.zeros((28, 28), dtype=np.uint8)).unsqueeze(0)


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
