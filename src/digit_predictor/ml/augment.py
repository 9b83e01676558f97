"""Batched augmentation that imitates drawing on a canvas, then MNIST-style re-normalisation.

Everything runs on whole batches in torch, so it costs a fraction of the training step. After
distorting, each digit is fitted to a 20x20 box and centred by centre of mass again, exactly as
`preprocess` does with a real drawing: the network only ever sees what preprocessing produces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from digit_predictor.ml.preprocess import BBOX_LEVEL, BOX, CENTRE, FIELD, NOISE_FLOOR

# Augmentation works at twice the resolution, so strokes can thicken by half a pixel and the
# final re-fit is an anti-aliased 2x2 average rather than a blurry bilinear shrink.
UPSAMPLE = 2


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 15.0
    scale_min: float = 0.75  # scale before re-fitting changes stroke width relative to size
    scale_max: float = 1.25
    aspect: float = 0.2  # independent x/y stretch, as log-ratio
    shear: float = 0.3
    translate: float = 0.1  # share of the field
    elastic_alpha: float = 1.5  # displacement amplitude in 28x28 pixels
    elastic_grid: int = 3  # coarse control grid of the smooth displacement field
    thicken_max: int = 2  # half-pixels of dilation at most (at 2x resolution: pixels)
    thin_prob: float = 0.2  # chance of eroding by one half-pixel instead
    prob: float = 0.7  # share of each batch that is augmented; the rest stays clean MNIST


def augment_batch(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """(N, 1, 28, 28) float 0..1 white-on-black -> augmented and re-normalised, same shape."""
    chosen = torch.rand(images.shape[0], generator=generator) < config.prob
    out = images.clone()
    if not bool(chosen.any()):
        return out
    big = F.interpolate(images[chosen], scale_factor=UPSAMPLE, mode="bilinear")
    big = _stroke_thickness(big, config, generator)
    big = _warp(big, config, generator)
    out[chosen] = renormalise(big, upsample=UPSAMPLE)
    return out


def _stroke_thickness(
    big: torch.Tensor, config: AugmentConfig, generator: torch.Generator
) -> torch.Tensor:
    """Per digit: erode by one step, keep, or dilate by up to `thicken_max` steps."""
    n = big.shape[0]
    amount = torch.randint(0, config.thicken_max + 1, (n,), generator=generator)
    amount[torch.rand(n, generator=generator) < config.thin_prob] = -1
    eroded = -F.max_pool2d(-big, 3, stride=1, padding=1)
    result = torch.where((amount == -1)[:, None, None, None], eroded, big)
    grown = big
    for step in range(1, config.thicken_max + 1):
        grown = F.max_pool2d(grown, 3, stride=1, padding=1)
        result = torch.where((amount == step)[:, None, None, None], grown, result)
    return result


def _warp(big: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Random affine (rotation, scale, aspect, shear, translation) plus a smooth elastic field."""
    n, _, size, _ = big.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    angle = uniform(-config.rotation_deg, config.rotation_deg) * math.pi / 180.0
    log_scale = uniform(math.log(config.scale_min), math.log(config.scale_max))
    log_aspect = uniform(-config.aspect, config.aspect)
    shear = uniform(-config.shear, config.shear)
    sx = torch.exp(log_scale + log_aspect / 2)
    sy = torch.exp(log_scale - log_aspect / 2)
    cos, sin = torch.cos(angle), torch.sin(angle)
    # Output -> input mapping in normalised coordinates: inverse of rotate . shear . scale.
    a = torch.stack(
        [
            torch.stack([cos / sx, (sin + shear * cos) / sx], dim=1),
            torch.stack([-sin / sy, cos / sy - shear * sin / sy], dim=1),
        ],
        dim=1,
    )
    shift = torch.stack(
        [
            uniform(-config.translate, config.translate),
            uniform(-config.translate, config.translate),
        ],
        dim=1,
    )
    theta = torch.cat([a, (2.0 * shift).unsqueeze(2)], dim=2)
    grid = F.affine_grid(theta, [n, 1, size, size], align_corners=False)
    if config.elastic_alpha > 0:
        coarse = torch.randn(n, 2, config.elastic_grid, config.elastic_grid, generator=generator)
        field = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=True)
        # alpha is in 28x28 pixels; grid units are 2 / size per pixel at that resolution.
        field = field * (config.elastic_alpha * 2.0 / FIELD)
        grid = grid + field.permute(0, 2, 3, 1)
    return F.grid_sample(big, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def renormalise(big: torch.Tensor, upsample: int = 1) -> torch.Tensor:
    """Fit each digit's ink box into 20x20 (aspect kept), centre of mass to the centre.

    `big` is (N, 1, 28*upsample, 28*upsample); the result is (N, 1, 28, 28), max-normalised like
    `preprocess`. Digits with no ink come back as they were (all zero).
    """
    n, _, size, _ = big.shape
    x = big.clamp(min=0.0)
    peak = x.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    x = x / peak
    x = torch.where(x < NOISE_FLOOR, torch.zeros_like(x), x)
    mask = x[:, 0] >= BBOX_LEVEL
    idx = torch.arange(size, dtype=torch.float32)
    rows_any, cols_any = mask.any(dim=2), mask.any(dim=1)
    big_num = float(size)
    top = torch.where(rows_any, idx, big_num).amin(dim=1)
    bottom = torch.where(rows_any, idx, -1.0).amax(dim=1) + 1.0
    left = torch.where(cols_any, idx, big_num).amin(dim=1)
    right = torch.where(cols_any, idx, -1.0).amax(dim=1) + 1.0
    extent = torch.maximum(bottom - top, right - left).clamp(min=1.0)
    has_ink = mask.flatten(1).any(dim=1)

    mass = x[:, 0].sum(dim=(1, 2)).clamp(min=1e-6)
    centres = idx + 0.5  # pixel centres in continuous coordinates
    com_y = (x[:, 0].sum(dim=2) * centres).sum(dim=1) / mass
    com_x = (x[:, 0].sum(dim=1) * centres).sum(dim=1) / mass

    out_size = FIELD * upsample
    scale = (BOX * upsample) / extent  # output pixels per input pixel
    # Output pixel centre u (continuous) maps to input (u - target) / scale + com.
    target = (CENTRE + 0.5) * upsample
    u = torch.arange(out_size, dtype=torch.float32) + 0.5
    in_y = (u[None, :] - target) / scale[:, None] + com_y[:, None]
    in_x = (u[None, :] - target) / scale[:, None] + com_x[:, None]
    # grid_sample's normalised coordinates (align_corners=False): -1..1 spans the pixel edges.
    gy = (2.0 * in_y / size - 1.0)[:, :, None].expand(n, out_size, out_size)
    gx = (2.0 * in_x / size - 1.0)[:, None, :].expand(n, out_size, out_size)
    grid = torch.stack([gx, gy], dim=3)
    fitted = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    if upsample > 1:
        fitted = F.avg_pool2d(fitted, upsample)
    fitted = fitted / fitted.amax(dim=(1, 2, 3), keepdim=True).clamp(min=1e-6)
    fitted = fitted.clamp(0.0, 1.0)
    return torch.where(has_ink[:, None, None, None], fitted, torch.zeros_like(fitted))
