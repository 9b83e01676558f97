"""Synthetic digits as a person would draw them on the app's 280x280 canvas (a generator).

Two kinds, both sent through a PNG round trip like the real app:
- MNIST digits redrawn at a random size (30-90% of the height), off-centre, with thinner or
  thicker uniform strokes (`redraw_digit`), for the canvas benchmark;
- pen-stroke digits built from stroke templates (`pen_digit`), including the styles MNIST rarely
  has: 1 with a long upstroke and a base, 7 with a crossbar, open and closed 4s. They are a proxy
  for drawings by people who are not in MNIST.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

CANVAS = 280

Point = tuple[float, float]
Stroke = list[Point]


def to_png(ink: np.ndarray, style: str = "alpha") -> bytes:
    """Encode an ink map (0..1) as the canvas would send it.

    alpha: RGBA, white strokes, ink in alpha, transparent background (the drawable canvas);
    white_on_black: opaque RGB; black_on_white: opaque greyscale, as a scan or photo would be.
    """
    level = np.clip(np.rint(ink * 255.0), 0, 255).astype(np.uint8)
    if style == "alpha":
        rgba = np.zeros((*ink.shape, 4), dtype=np.uint8)
        rgba[..., :3] = 255
        rgba[..., 3] = level
        img = Image.fromarray(rgba, mode="RGBA")
    elif style == "white_on_black":
        img = Image.fromarray(np.repeat(level[..., None], 3, axis=2), mode="RGB")
    elif style == "black_on_white":
        img = Image.fromarray(255 - level, mode="L")
    else:
        raise ValueError(f"unknown style {style!r}")
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def thin(binary: np.ndarray) -> np.ndarray:
    """Zhang-Suen thinning: the one-pixel centre line of a binary shape (vectorised)."""
    img = np.pad(binary.astype(np.uint8), 1)
    while True:
        changed = False
        for step in (0, 1):
            p = np.pad(img, 1)
            p2, p3, p4 = p[:-2, 1:-1], p[:-2, 2:], p[1:-1, 2:]
            p5, p6, p7 = p[2:, 2:], p[2:, 1:-1], p[2:, :-2]
            p8, p9 = p[1:-1, :-2], p[:-2, :-2]
            ring = [p2, p3, p4, p5, p6, p7, p8, p9, p2]
            neighbours = sum(r.astype(np.int16) for r in ring[:8])
            transitions = sum(
                ((a == 0) & (b == 1)).astype(np.int16) for a, b in itertools.pairwise(ring)
            )
            if step == 0:
                keep_shape = (p2 * p4 * p6 == 0) & (p4 * p6 * p8 == 0)
            else:
                keep_shape = (p2 * p4 * p8 == 0) & (p2 * p6 * p8 == 0)
            remove = (
                (img == 1) & (neighbours >= 2) & (neighbours <= 6) & (transitions == 1) & keep_shape
            )
            if remove.any():
                img[remove] = 0
                changed = True
        if not changed:
            return img[1:-1, 1:-1].astype(bool)


def ink_depth(solid: np.ndarray) -> np.ndarray:
    """How many layers of erosion each ink pixel survives: its distance to the background.

    Erosions alternate between the 4- and the 8-neighbourhood, an octagonal approximation of
    the Euclidean distance that treats diagonal strokes nearly like straight ones."""
    depth = np.zeros(solid.shape, dtype=np.float32)
    current = solid.copy()
    step = 0
    while current.any():
        depth += current
        p = np.pad(current, 1)
        eroded = current & p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
        if step % 2:
            eroded &= p[:-2, :-2] & p[:-2, 2:] & p[2:, :-2] & p[2:, 2:]
        current = eroded
        step += 1
    return depth


# A centre point whose stroke is this many times the digit's typical half-width sits in a blob.
BLOB_FACTOR = 1.8


def redraw_digit(
    digit: np.ndarray,
    rng: np.random.Generator,
    height_share: tuple[float, float] = (0.3, 0.9),
    brush: tuple[float, float] = (8.0, 36.0),
    max_brush_share: float = 0.2,
    size: int = CANVAS,
    supersample: int = 2,
) -> np.ndarray:
    """An MNIST digit (uint8 28x28) redrawn on a 280x280 canvas the way a person would draw it:
    its centre line traced with a round brush of uniform width, at a random size and place.

    The brush is never wider than `max_brush_share` of the digit's height, the boldest MNIST
    strokes (95th percentile: 4 of 20 pixels): beyond that the loops of 8s and 9s fill in and
    the drawing is no longer a legible digit for anyone. Where the writer filled a small loop
    solid (a blob, much thicker than the digit's own stroke), the blob is drawn solid too: its
    centre line alone is a short dash, which turns a 9 into a 1. `size` draws on a smaller canvas
    with the brush scaled to match (cheaper, for making training data)."""
    ink = digit.astype(np.float32) / 255.0
    rows = np.flatnonzero((ink > 0.2).any(axis=1))
    cols = np.flatnonzero((ink > 0.2).any(axis=0))
    crop = ink[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    up = 4
    big = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(crop))[None, None],
        size=(crop.shape[0] * up, crop.shape[1] * up),
        mode="bicubic",
    )[0, 0].numpy()
    solid = big > 0.45
    ys, xs = np.nonzero(thin(solid))
    if ys.size == 0:
        ys, xs = np.nonzero(solid)
    half_width = ink_depth(solid)[ys, xs] - 0.5  # local stroke half-width at each centre point
    blob = half_width > BLOB_FACTOR * float(np.median(half_width))
    target_h = rng.uniform(*height_share) * size
    width = min(float(rng.uniform(*brush)) * size / CANVAS, max_brush_share * target_h)
    scale = (target_h - width) / max(float(ys.max() - ys.min()), 1.0)
    span_x = float(xs.max() - xs.min()) * scale + width
    if span_x > size - 2:
        scale *= (size - 2 - width) / (span_x - width)
    span_x = float(xs.max() - xs.min()) * scale + width
    span_y = float(ys.max() - ys.min()) * scale + width
    off_x = rng.uniform(0, size - span_x) + width / 2 - float(xs.min()) * scale
    off_y = rng.uniform(0, size - span_y) + width / 2 - float(ys.min()) * scale
    sup = supersample  # drawn big, then shrunk: anti-aliased edges like a browser canvas
    img = Image.new("L", (size * sup, size * sup), 0)
    draw = ImageDraw.Draw(img)
    brush_radius = width * sup / 2
    for y, x, hw, in_blob in zip(ys, xs, half_width, blob, strict=True):
        cx, cy = (x * scale + off_x) * sup, (y * scale + off_y) * sup
        radius = max(brush_radius, hw * scale * sup) if in_blob else brush_radius
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


# --- pen-stroke digits ------------------------------------------------------------------------
# Templates in a unit box (x right, y down, height 1, width ~0.7); each returns its strokes.


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> Stroke:
    n = max(8, int(abs(end - start) / 8))
    ts = np.radians(np.linspace(start, end, n))
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts]


def _bezier(p0: Point, p1: Point, p2: Point, n: int = 16) -> Stroke:
    ts = np.linspace(0.0, 1.0, n)
    return [
        (
            (1 - t) ** 2 * p0[0] + 2 * (1 - t) * t * p1[0] + t**2 * p2[0],
            (1 - t) ** 2 * p0[1] + 2 * (1 - t) * t * p1[1] + t**2 * p2[1],
        )
        for t in ts
    ]


def _zero(r: np.random.Generator) -> list[Stroke]:
    start = r.uniform(250, 290)
    return [_arc(0.5, 0.5, 0.34, 0.5, start, start + r.uniform(350, 385))]


def _one(r: np.random.Generator) -> list[Stroke]:
    style = r.integers(0, 4)
    stem = [(0.55, 0.0), (0.5 + r.uniform(-0.05, 0.02), 1.0)]
    if style == 0:
        return [stem]
    flag = [(r.uniform(0.15, 0.3), r.uniform(0.2, 0.4)), *stem]  # the long upstroke
    if style == 1:
        return [flag]
    base = [(0.2, 1.0), (0.85, 1.0)]
    if style == 2:
        return [flag, base]
    return [[(0.4, 0.12), *stem]]  # a short flag


def _two(r: np.random.Generator) -> list[Stroke]:
    top = _arc(0.5, 0.3, 0.32, 0.3, r.uniform(170, 200), r.uniform(370, 400))
    stroke = [*top, (0.12, 1.0), (0.9, 1.0)]
    if r.random() < 0.3:  # a loop at the bottom left
        stroke = [*top, (0.2, 0.95), *_arc(0.25, 0.9, 0.08, 0.08, 0, 300), (0.9, 1.0)]
    return [stroke]


def _three(r: np.random.Generator) -> list[Stroke]:
    upper = _arc(0.48, 0.26, 0.3, 0.26, r.uniform(190, 220), 450)
    lower = _arc(0.48, 0.74, 0.34, 0.26, 270, r.uniform(500, 530))
    return [[*upper, *lower]]


def _four(r: np.random.Generator) -> list[Stroke]:
    x = r.uniform(0.6, 0.72)
    bar = r.uniform(0.58, 0.7)
    if r.random() < 0.5:  # closed 4: diagonal into the bar, stem from the top
        return [[(x, 0.0), (0.08, bar), (0.92, bar)], [(x, 0.0), (x, 1.0)]]
    return [[(0.25, 0.0), (0.12, bar), (0.92, bar)], [(x, 0.12), (x, 1.0)]]  # open 4


def _five(r: np.random.Generator) -> list[Stroke]:
    belly = _arc(0.48, 0.68, 0.36, 0.3, 235, r.uniform(480, 510))
    if r.random() < 0.5:
        return [[(0.25, 0.0), (0.2, 0.45), *belly], [(0.25, 0.0), (0.85, 0.0)]]
    return [[(0.85, 0.0), (0.25, 0.0), (0.2, 0.45), *belly]]


def _six(r: np.random.Generator) -> list[Stroke]:
    lead = _bezier((r.uniform(0.6, 0.8), 0.0), (0.15, 0.25), (0.17, 0.7))
    loop = _arc(0.5, 0.72, 0.33, 0.27, 180, 180 + r.uniform(330, 370))
    return [[*lead, *loop]]


def _seven(r: np.random.Generator) -> list[Stroke]:
    foot = (r.uniform(0.25, 0.45), 1.0)
    head = [(0.08, 0.0), (0.92, 0.0), foot]
    if r.random() < 0.3:
        head = [(0.08, 0.15), *head]  # a serif at the start
    strokes = [head]
    if r.random() < 0.5:  # crossbar, as much of Europe writes it
        mid = 0.92 + (foot[0] - 0.92) * 0.5
        strokes.append([(mid - 0.28, 0.52), (mid + 0.25, 0.48)])
    return strokes


def _eight(r: np.random.Generator) -> list[Stroke]:
    upper = _arc(0.5, 0.25, 0.27, 0.25, 90, 90 + 360)
    lower = _arc(0.5, 0.74, 0.34, 0.26, 270, 270 + 360)
    if r.random() < 0.5:
        return [upper, lower]
    return [[*_arc(0.5, 0.25, 0.27, 0.25, 0, 270), *lower[::-1], (0.77, 0.25)]]


def _nine(r: np.random.Generator) -> list[Stroke]:
    loop = _arc(0.5, 0.28, 0.32, 0.27, 0, 360 + r.uniform(-10, 20))
    if r.random() < 0.5:
        tail = [(0.82, 0.28), (r.uniform(0.7, 0.82), 1.0)]
    else:
        tail = _bezier((0.82, 0.28), (0.8, 0.9), (0.45, 1.0))
    return [loop, tail]


TEMPLATES: dict[int, Callable[[np.random.Generator], list[Stroke]]] = {
    0: _zero,
    1: _one,
    2: _two,
    3: _three,
    4: _four,
    5: _five,
    6: _six,
    7: _seven,
    8: _eight,
    9: _nine,
}


def pen_digit(
    digit: int,
    rng: np.random.Generator,
    height_share: tuple[float, float] = (0.35, 0.9),
    brush: tuple[float, float] = (10.0, 40.0),
) -> np.ndarray:
    """A digit drawn with a round pen on a 280x280 canvas: jittered template, random affine."""
    strokes = TEMPLATES[digit](rng)
    angle = math.radians(rng.uniform(-12, 12))
    shear = rng.uniform(-0.25, 0.15)
    aspect = rng.uniform(0.65, 1.05)
    width = float(rng.uniform(*brush))
    height = rng.uniform(*height_share) * (CANVAS - width)
    cos, sin = math.cos(angle), math.sin(angle)

    def transform(p: Point, dx: float, dy: float) -> Point:
        x = (p[0] - 0.5) * aspect + dx
        y = p[1] - 0.5 + dy
        x += shear * -y
        return (height * (cos * x - sin * y), height * (sin * x + cos * y))

    # Each stroke is displaced as a whole and bent by a slow wave, never point by point:
    # a hand wobbles smoothly.
    drawn = []
    for stroke in strokes:
        off = rng.normal(0.0, 0.025, size=2)
        amp = rng.normal(0.0, 0.015, size=2)
        phase = rng.uniform(0, 2 * math.pi, size=2)
        n = max(len(stroke) - 1, 1)
        drawn.append(
            [
                transform(
                    p,
                    off[0] + amp[0] * math.sin(math.pi * i / n + phase[0]),
                    off[1] + amp[1] * math.sin(math.pi * i / n + phase[1]),
                )
                for i, p in enumerate(stroke)
            ]
        )
    xs = [p[0] for s in drawn for p in s]
    ys = [p[1] for s in drawn for p in s]
    span_x, span_y = max(xs) - min(xs) + width, max(ys) - min(ys) + width
    fit = min(1.0, (CANVAS - 2) / max(span_x, span_y))
    span_x, span_y = span_x * fit, span_y * fit
    off_x = rng.uniform(0, CANVAS - span_x) - min(xs) * fit + width * fit / 2
    off_y = rng.uniform(0, CANVAS - span_y) - min(ys) * fit + width * fit / 2
    up = 2  # draw at twice the size, then shrink: anti-aliased like a browser canvas
    img = Image.new("L", (CANVAS * up, CANVAS * up), 0)
    draw = ImageDraw.Draw(img)
    pen = max(1, round(width * fit * up))
    for stroke in drawn:
        pts = [((x * fit + off_x) * up, (y * fit + off_y) * up) for x, y in stroke]
        draw.line(pts, fill=255, width=pen, joint="curve")
        for x, y in (pts[0], pts[-1]):  # round caps
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    img = img.resize((CANVAS, CANVAS), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def pen_training_digits(per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Pen-stroke digits through the preprocessing, as uint8 (N, 28, 28) images and labels."""
    from digit_predictor.ml.preprocess import preprocess_ink

    rng = np.random.default_rng(seed)
    labels = np.arange(10 * per_class, dtype=np.int64) % 10
    images = np.stack([preprocess_ink(pen_digit(int(d), rng)).image for d in labels])
    return images, labels


def redrawn_training_digits(images: np.ndarray, seed: int, size: int = 140) -> np.ndarray:
    """MNIST training digits redrawn with a round brush (small canvas), then preprocessed."""
    from digit_predictor.ml.preprocess import EmptyDrawingError, preprocess_ink

    rng = np.random.default_rng(seed)
    out = np.zeros((len(images), 28, 28), dtype=np.uint8)
    for i, image in enumerate(images):
        try:
            out[i] = preprocess_ink(redraw_digit(image, rng, size=size, supersample=1)).image
        except EmptyDrawingError:
            out[i] = image
    return out
