"""What an explanation is, and its picture: the attributions of integrated gradients on the 28x28
input, the quadrature along the path, and the red/blue overlay. No torch here: the api imports
this for its routes, and computes explanations (ml/explain.py, which needs torch) only when one
is asked for.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Final

import numpy as np
from PIL import Image

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
