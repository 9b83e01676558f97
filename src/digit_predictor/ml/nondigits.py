"""Drawings that are not a digit, made the way a person's drawing reaches the api.

Eight generators, each a different idea of "not a digit", so a detector fitted on some of them
can be checked on the others (and on held-out fonts and seeds):

- letters: glyphs of the DejaVu fonts, traced along their centre line with a round brush, like
  the canvas benchmark redraws MNIST digits. Letters a person draws exactly like a digit (O/o
  and 0, I/l/| and 1, Z/z and 2, S/s and 5, b and 6, q/g and 9, B and 8) are left out of the
  non-digit sets: nobody, model or person, can tell them apart, and calling an "O" a 0 is right.
- pen letters: the same letters as a pen writes them, from the single-stroke Hershey plotter
  fonts (script, roman, italic), with a hand's slow wobble. Traced typeset glyphs alone taught
  the detector little about script: it let about 30% of script letters through.
- scribbles: one to three smooth random pen paths, crossing themselves.
- shapes: triangle, square, star, arrow, heart, spiral, hash, cross-hatch, zigzag, wave...
  (never a plain circle or ellipse: that is a 0).
- doodles: small pictures built from parts: house, smiley, sun, tree, stick figure, flower,
  fish, cat face, car.
- two digits: two MNIST digits (or two pen-stroke digits) side by side, as one drawing.
- slashed digits: a digit with a stroke through it, as a person crosses something out (never
  0, since a slashed zero is a zero, nor 7, whose own stroke is a slash).
- filled shapes: a triangle, quadrilateral, pentagon, star, ellipse or blob coloured in, solid
  or hatched back and forth with the pen (the outline generators above never fill anything,
  and a filled triangle used to pass as a 1).

Every drawing is an ink map on the 280x280 canvas, drawn with a round brush, sent as a PNG (in
the canvas's styles) and put through the serving preprocessing (`preprocess_bytes`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from HersheyFonts import HersheyFonts
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from digit_predictor.ml.preprocess import EmptyDrawingError, preprocess_bytes
from digit_predictor.ml.synthetic_digits import CANVAS, TEMPLATES, pen_digit, redraw_digit, to_png

FONT_DIR = Path("/usr/share/fonts/truetype/dejavu")
# Fonts split so that the validation letters come from faces the detector never saw.
TRAIN_FONTS = (
    "DejaVuSans.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSerif-Italic.ttf",
    "DejaVuSansCondensed-Oblique.ttf",
    "DejaVuSerifCondensed-Bold.ttf",
)
HELDOUT_FONTS = (
    "DejaVuSansMono.ttf",
    "DejaVuSans-Oblique.ttf",
    "DejaVuSerifCondensed.ttf",
    "DejaVuSansMono-BoldOblique.ttf",
)
# Hershey fonts, split by family: some names are the same glyphs twice (cursive = scripts,
# rowmans = futural, rowmand = futuram, timesrb = rowmant), so each family is on one side only.
PEN_TRAIN_FONTS = ("scripts", "futural", "rowmant", "timesi")
PEN_HELDOUT_FONTS = ("scriptc", "futuram", "timesr", "timesib")

# Letters a person draws the same as a digit: they are neither digits nor non-digits here.
LOOKALIKES: dict[str, int] = {
    "O": 0, "o": 0, "D": 0, "Q": 0,
    "I": 1, "l": 1, "i": 1, "j": 1, "J": 1,
    "Z": 2, "z": 2,
    "S": 5, "s": 5,
    "b": 6, "G": 6,
    "q": 9, "g": 9, "a": 9,
    "B": 8,
    "T": 7, "y": 4, "h": 4,
}  # fmt: skip
LETTERS = "".join(
    c for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz" if c not in LOOKALIKES
)

Point = tuple[float, float]
Stroke = list[Point]
Generator = Callable[[np.random.Generator, "Split"], np.ndarray]


@dataclass(frozen=True)
class Split:
    """Which side of the train/validation split a generator draws from."""

    heldout: bool

    @property
    def fonts(self) -> tuple[str, ...]:
        return HELDOUT_FONTS if self.heldout else TRAIN_FONTS

    @property
    def pen_fonts(self) -> tuple[str, ...]:
        return PEN_HELDOUT_FONTS if self.heldout else PEN_TRAIN_FONTS


TRAIN = Split(heldout=False)
HELDOUT = Split(heldout=True)


# --- painting -----------------------------------------------------------------------------------


def paint(strokes: Sequence[Stroke], width: float, size: int = CANVAS) -> np.ndarray:
    """Strokes in canvas pixels, drawn with a round pen of `width` px, anti-aliased -> ink 0..1."""
    up = 2
    img = Image.new("L", (size * up, size * up), 0)
    draw = ImageDraw.Draw(img)
    pen = max(1, round(width * up))
    for stroke in strokes:
        pts = [(x * up, y * up) for x, y in stroke]
        if len(pts) > 1:
            draw.line(pts, fill=255, width=pen, joint="curve")
        for x, y in (pts[0], pts[-1]):  # round caps
            draw.ellipse([x - pen / 2, y - pen / 2, x + pen / 2, y + pen / 2], fill=255)
    img = img.resize((size, size), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.float32) / 255.0


def place(strokes: Sequence[Stroke], rng: np.random.Generator) -> tuple[list[Stroke], float]:
    """Unit-box strokes -> canvas strokes: random size (35-90%), slant, rotation, place, brush."""
    width = float(rng.uniform(8.0, 36.0))
    angle = math.radians(rng.uniform(-15, 15))
    shear = rng.uniform(-0.2, 0.2)
    aspect = rng.uniform(0.75, 1.3)
    cos, sin = math.cos(angle), math.sin(angle)
    moved = []
    for stroke in strokes:
        out = []
        for x, y in stroke:
            x, y = (x - 0.5) * aspect, y - 0.5
            x += shear * -y
            out.append((cos * x - sin * y, sin * x + cos * y))
        moved.append(out)
    xs = [p[0] for s in moved for p in s]
    ys = [p[1] for s in moved for p in s]
    span = max(max(xs) - min(xs), max(ys) - min(ys), 1e-3)
    size = rng.uniform(0.35, 0.9) * (CANVAS - width - 2)
    scale = size / span
    off_x = rng.uniform(0, CANVAS - width - (max(xs) - min(xs)) * scale) + width / 2
    off_y = rng.uniform(0, CANVAS - width - (max(ys) - min(ys)) * scale) + width / 2
    return [
        [((x - min(xs)) * scale + off_x, (y - min(ys)) * scale + off_y) for x, y in s]
        for s in moved
    ], width


def _wobble(stroke: Stroke, rng: np.random.Generator, amount: float = 0.015) -> Stroke:
    """A slow wave along a stroke: a hand wobbles smoothly, never point by point."""
    n = max(len(stroke) - 1, 1)
    amp = rng.normal(0.0, amount, size=2)
    phase = rng.uniform(0, 2 * math.pi, size=2)
    return [
        (
            x + amp[0] * math.sin(math.pi * i / n + phase[0]),
            y + amp[1] * math.sin(math.pi * i / n + phase[1]),
        )
        for i, (x, y) in enumerate(stroke)
    ]


def _arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> Stroke:
    n = max(8, int(abs(end - start) / 8))
    ts = np.radians(np.linspace(start, end, n))
    return [(cx + rx * math.cos(t), cy + ry * math.sin(t)) for t in ts]


def _line(p: Point, q: Point, n: int = 8) -> Stroke:
    return [(p[0] + (q[0] - p[0]) * t, p[1] + (q[1] - p[1]) * t) for t in np.linspace(0, 1, n)]


def _polygon(points: Sequence[Point]) -> Stroke:
    out: Stroke = []
    for p, q in zip(points, [*points[1:], points[0]], strict=True):
        out.extend(_line(p, q)[:-1])
    out.append(points[0])
    return out


# --- letters ------------------------------------------------------------------------------------


@cache
def _font(name: str) -> ImageFont.FreeTypeFont:
    return ImageFont.truetype(str(FONT_DIR / name), size=44)


def glyph(char: str, font: str) -> np.ndarray:
    """A font glyph as a uint8 image, white on black, cropped to its ink."""
    face = _font(font)
    img = Image.new("L", (96, 96), 0)
    ImageDraw.Draw(img).text((20, 10), char, fill=255, font=face)
    ink = np.asarray(img)
    rows = np.flatnonzero((ink > 50).any(axis=1))
    cols = np.flatnonzero((ink > 50).any(axis=0))
    return np.ascontiguousarray(ink[rows[0] - 2 : rows[-1] + 3, cols[0] - 2 : cols[-1] + 3])


def letter(rng: np.random.Generator, split: Split, alphabet: str = LETTERS) -> np.ndarray:
    """A letter (never a digit look-alike) from a DejaVu font, redrawn with a round brush."""
    char = alphabet[int(rng.integers(len(alphabet)))]
    image = glyph(char, split.fonts[int(rng.integers(len(split.fonts)))])
    img = Image.fromarray(np.pad(image, 8))
    img = img.rotate(float(rng.uniform(-15, 15)), resample=Image.Resampling.BILINEAR)
    shear = float(rng.uniform(-0.25, 0.25))
    img = img.transform(
        img.size,
        Image.Transform.AFFINE,
        (1, shear, -shear * img.size[1] / 2, 0, 1, 0),
        resample=Image.Resampling.BILINEAR,
    )
    return redraw_digit(np.asarray(img), rng, height_share=(0.3, 0.9), max_brush_share=0.25)


@cache
def hershey_font(name: str) -> HersheyFonts:
    font = HersheyFonts()
    font.load_default_font(name)
    return font


def pen_strokes(char: str, font: str) -> list[Stroke]:
    """A Hershey glyph's strokes (font units, y down), as the plotter's pen moves."""
    strokes = hershey_font(font).strokes_for_text(char)
    return [[(float(x), float(y)) for x, y in s] for s in map(list, strokes) if len(s) > 1]


def pen_letter(rng: np.random.Generator, split: Split) -> np.ndarray:
    """A letter (never a digit look-alike) written along a single-stroke Hershey glyph."""
    char = LETTERS[int(rng.integers(len(LETTERS)))]
    font = split.pen_fonts[int(rng.integers(len(split.pen_fonts)))]
    placed, width = place(pen_strokes(char, font), rng)
    # A brush of at most 28 px: the fonts' double and triple strokes run together above it.
    return paint([_wobble(s, rng, amount=1.5) for s in placed], min(width, 28.0))  # 1.5 px


def lookalike_letter(rng: np.random.Generator, split: Split) -> np.ndarray:
    """A letter a person draws like a digit (O, l, Z, S, ...): reported, never a target."""
    return letter(rng, split, "".join(sorted(LOOKALIKES)))


# --- scribbles, shapes, doodles -------------------------------------------------------------------


def scribble(rng: np.random.Generator, split: Split) -> np.ndarray:
    """One to three smooth random pen paths: a wandering heading that turns and loops."""
    strokes = []
    for _ in range(int(rng.integers(1, 4))):
        heading = rng.uniform(0, 2 * math.pi)
        turn = rng.normal(0, 0.3)
        x, y = rng.uniform(0.2, 0.8, size=2)
        path: Stroke = [(float(x), float(y))]
        for _ in range(int(rng.integers(30, 90))):
            turn = 0.85 * turn + rng.normal(0, 0.25)
            heading += turn
            x = float(np.clip(x + 0.035 * math.cos(heading), 0, 1))
            y = float(np.clip(y + 0.035 * math.sin(heading), 0, 1))
            path.append((x, y))
        strokes.append(path)
    placed, width = place(strokes, rng)
    return paint(placed, width)


def _star(r: np.random.Generator) -> list[Stroke]:
    k = int(r.integers(5, 8))
    step = 2 if k != 6 else 1
    pts = [
        (
            0.5 + 0.5 * math.sin(2 * math.pi * i * step / k),
            0.5 - 0.5 * math.cos(2 * math.pi * i * step / k),
        )
        for i in range(k)
    ]
    if step == 1:  # a six-pointed star as two triangles
        return [_polygon(pts[0::2]), _polygon(pts[1::2])]
    return [_polygon(pts)]


def _spiral(r: np.random.Generator) -> list[Stroke]:
    turns = r.uniform(1.5, 3.5)
    ts = np.linspace(0, turns * 2 * math.pi, int(turns * 40))
    return [
        [(0.5 + 0.5 * t / ts[-1] * math.cos(t), 0.5 + 0.5 * t / ts[-1] * math.sin(t)) for t in ts]
    ]


def _heart(r: np.random.Generator) -> list[Stroke]:
    ts = np.linspace(0, 2 * math.pi, 60)
    return [
        [
            (
                0.5 + 0.5 * math.sin(t) ** 3,
                0.45
                - (13 * math.cos(t) - 5 * math.cos(2 * t) - 2 * math.cos(3 * t) - math.cos(4 * t))
                / 34,
            )
            for t in ts
        ]
    ]


SHAPES: dict[str, Callable[[np.random.Generator], list[Stroke]]] = {
    "triangle": lambda r: [_polygon([(0.5, 0.0), (1.0, 1.0), (0.0, 1.0)])],
    "square": lambda r: [
        _polygon([(0, 0), (1, 0), (1, r.uniform(0.6, 1.0)), (0, r.uniform(0.6, 1.0))])
    ],
    "diamond": lambda r: [_polygon([(0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5)])],
    "star": _star,
    "spiral": _spiral,
    "heart": _heart,
    "arrow": lambda r: [_line((0, 0.5), (1, 0.5)), [(0.65, 0.2), (1, 0.5), (0.65, 0.8)]],
    "hash": lambda r: [
        _line((0.35, 0), (0.3, 1)),
        _line((0.7, 0), (0.65, 1)),
        _line((0, 0.33), (1, 0.33)),
        _line((0, 0.67), (1, 0.67)),
    ],
    "cross": lambda r: [_line((0, 0), (1, 1)), _line((1, 0), (0, 1))],
    "plus": lambda r: [_line((0.5, 0), (0.5, 1)), _line((0, 0.5), (1, 0.5))],
    "zigzag": lambda r: [[(i / 6, float(i % 2)) for i in range(7)]],
    "wave": lambda r: [
        [(t, 0.5 + 0.25 * math.sin(t * r.uniform(3, 5) * math.pi)) for t in np.linspace(0, 1, 40)]
    ],
    "crosshatch": lambda r: (
        [_line((i / 4, 0), (i / 4 + 0.3, 1)) for i in range(4)] + [_line((0, 0.3), (1, 0.7))]
    ),
    "pentagon": lambda r: [
        _polygon(
            [
                (0.5 + 0.5 * math.sin(a), 0.5 - 0.5 * math.cos(a))
                for a in np.linspace(0, 2 * math.pi, 6)[:-1]
            ]
        )
    ],
    "grid": lambda r: [
        _polygon([(0, 0), (1, 0), (1, 1), (0, 1)]),
        _line((0.5, 0), (0.5, 1)),
        _line((0, 0.5), (1, 0.5)),
    ],
}


def shape(rng: np.random.Generator, split: Split) -> np.ndarray:
    """A geometric figure (never a plain ellipse: that is a 0), wobbly and slanted."""
    names = sorted(SHAPES)
    strokes = SHAPES[names[int(rng.integers(len(names)))]](rng)
    placed, width = place([_wobble(s, rng) for s in strokes], rng)
    return paint(placed, width)


def _circle(cx: float, cy: float, r: float) -> Stroke:
    return _arc(cx, cy, r, r, 0, 360)


DOODLES: dict[str, Callable[[np.random.Generator], list[Stroke]]] = {
    "house": lambda r: [
        _polygon([(0.1, 0.45), (0.9, 0.45), (0.9, 1), (0.1, 1)]),
        [(0.0, 0.5), (0.5, 0.0), (1.0, 0.5)],
        _polygon([(0.42, 1), (0.42, 0.72), (0.58, 0.72), (0.58, 1)]),
    ],
    "smiley": lambda r: [
        _circle(0.5, 0.5, 0.5),
        _circle(0.33, 0.38, 0.05),
        _circle(0.67, 0.38, 0.05),
        _arc(0.5, 0.55, 0.25, 0.2, 20, 160),
    ],
    "sun": lambda r: (
        [_circle(0.5, 0.5, 0.22)]
        + [
            _line(
                (0.5 + 0.3 * math.cos(a), 0.5 + 0.3 * math.sin(a)),
                (0.5 + 0.5 * math.cos(a), 0.5 + 0.5 * math.sin(a)),
            )
            for a in np.linspace(0, 2 * math.pi, int(r.integers(6, 11)), endpoint=False)
        ]
    ),
    "tree": lambda r: [
        _circle(0.5, 0.32, 0.32),
        _line((0.45, 0.62), (0.45, 1)),
        _line((0.55, 0.62), (0.55, 1)),
    ],
    "stick figure": lambda r: [
        _circle(0.5, 0.12, 0.12),
        _line((0.5, 0.24), (0.5, 0.65)),
        _line((0.15, 0.4), (0.85, 0.4)),
        [(0.2, 1), (0.5, 0.65), (0.8, 1)],
    ],
    "flower": lambda r: (
        [_circle(0.5, 0.3, 0.08)]
        + [
            _circle(0.5 + 0.17 * math.cos(a), 0.3 + 0.17 * math.sin(a), 0.09)
            for a in np.linspace(0, 2 * math.pi, 6, endpoint=False)
        ]
        + [_line((0.5, 0.47), (0.5, 1)), _arc(0.62, 0.75, 0.12, 0.06, 180, 360)]
    ),
    "fish": lambda r: [
        _arc(0.4, 0.5, 0.4, 0.25, 0, 360),
        [(0.75, 0.5), (1, 0.25), (1, 0.75), (0.75, 0.5)],
        _circle(0.2, 0.45, 0.03),
    ],
    "cat": lambda r: [
        _circle(0.5, 0.6, 0.4),
        [(0.18, 0.35), (0.2, 0.0), (0.4, 0.22)],
        [(0.6, 0.22), (0.8, 0.0), (0.82, 0.35)],
        _circle(0.35, 0.55, 0.04),
        _circle(0.65, 0.55, 0.04),
        _line((0.05, 0.7), (0.35, 0.72)),
        _line((0.65, 0.72), (0.95, 0.7)),
    ],
    "car": lambda r: [
        [
            (0, 0.75),
            (0, 0.45),
            (0.25, 0.45),
            (0.35, 0.2),
            (0.7, 0.2),
            (0.8, 0.45),
            (1, 0.45),
            (1, 0.75),
            (0, 0.75),
        ],
        _circle(0.22, 0.8, 0.1),
        _circle(0.78, 0.8, 0.1),
    ],
    "cloud": lambda r: [
        [
            *_arc(0.25, 0.6, 0.2, 0.2, 90, 270),
            *_arc(0.5, 0.4, 0.25, 0.25, 190, 350),
            *_arc(0.78, 0.6, 0.2, 0.2, 270, 450),
            (0.25, 0.8),
        ]
    ],
    "envelope": lambda r: [
        _polygon([(0, 0.2), (1, 0.2), (1, 0.8), (0, 0.8)]),
        [(0, 0.2), (0.5, 0.55), (1, 0.2)],
    ],
}


def doodle(rng: np.random.Generator, split: Split) -> np.ndarray:
    """A small picture built from parts (house, smiley, sun, tree, stick figure, ...)."""
    names = sorted(DOODLES)
    strokes = DOODLES[names[int(rng.integers(len(names)))]](rng)
    placed, width = place([_wobble(s, rng, 0.01) for s in strokes], rng)
    return paint(placed, min(width, 22.0))


def _outline(rng: np.random.Generator) -> list[Point]:
    """A closed outline in the unit box: a triangle, a quadrilateral, a pentagon, a star, an
    ellipse or an irregular blob."""
    kind = int(rng.integers(6))
    if kind == 3:  # a star: alternate outer and inner points
        spikes = int(rng.integers(4, 7))
        angles = np.linspace(0, 2 * math.pi, 2 * spikes + 1)[:-1]
        points = [0.5 if i % 2 == 0 else float(rng.uniform(0.2, 0.3)) for i in range(len(angles))]
        return [
            (0.5 + r * math.sin(a), 0.5 - r * math.cos(a))
            for r, a in zip(points, angles, strict=True)
        ]
    if kind == 4:  # an ellipse
        return [
            (0.5 + 0.5 * math.cos(t), 0.5 + 0.5 * math.sin(t))
            for t in np.linspace(0, 2 * math.pi, 40)[:-1]
        ]
    corners = {0: 3, 1: 4, 2: 5, 5: 12}[kind]  # triangle, quadrilateral, pentagon, blob
    angles = (
        np.sort(rng.uniform(0, 2 * math.pi, corners))
        if kind == 5
        else np.linspace(0, 2 * math.pi, corners + 1)[:-1]
    )
    radii = rng.uniform(0.3, 0.5, corners) if kind == 5 else np.full(corners, 0.5)
    return [
        (0.5 + r * math.cos(a), 0.5 + r * math.sin(a)) for r, a in zip(radii, angles, strict=True)
    ]


def filled_shape(rng: np.random.Generator, split: Split) -> np.ndarray:
    """A shape coloured in: filled solid, or hatched back and forth with the pen as a person
    fills an area on a canvas (never an outline alone: `shape` draws those)."""
    outline = _outline(rng)
    placed, width = place([[*outline, outline[0]]], rng)
    border = placed[0]
    up = 2
    region = Image.new("L", (CANVAS * up, CANVAS * up), 0)
    ImageDraw.Draw(region).polygon([(x * up, y * up) for x, y in border], fill=255)
    mask = (
        np.asarray(region.resize((CANVAS, CANVAS), Image.Resampling.BOX), dtype=np.float32) / 255.0
    )
    if rng.random() < 0.5:  # solid, its edge drawn with the pen
        solid: np.ndarray = np.maximum(mask, paint([border], width))
        return solid
    # Hatched: a zigzag across the shape, lines 0.6-1.5 pens apart, kept inside the shape.
    xs, ys = [x for x, _ in border], [y for _, y in border]
    gap = width * rng.uniform(0.6, 1.5)
    rows = np.arange(min(ys), max(ys) + gap, gap)
    zigzag = [(min(xs) if i % 2 == 0 else max(xs), float(y)) for i, y in enumerate(rows)]
    if rng.random() < 0.5:  # the same zigzag turned a quarter: strokes down, not across
        zigzag = [(min(xs) + max(ys) - y, x - min(xs) + min(ys)) for x, y in zigzag]
    hatch = paint([zigzag], width)
    grown = Image.fromarray((mask * 255).astype(np.uint8)).filter(
        ImageFilter.MaxFilter(2 * round(width / 4) + 1)
    )
    hatched: np.ndarray = np.maximum(
        hatch * (np.asarray(grown, dtype=np.float32) / 255.0), paint([border], width * 0.5)
    )
    return hatched


# --- digits that are not one digit ----------------------------------------------------------------


def _crop(image: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero((image > 50).any(axis=1))
    cols = np.flatnonzero((image > 50).any(axis=0))
    return image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _pen_image(digit: int, rng: np.random.Generator) -> np.ndarray:
    """A pen-stroke digit as a cropped uint8 image (what redraw_digit takes)."""
    ink = pen_digit(digit, rng, height_share=(0.5, 0.6))
    small = Image.fromarray((ink * 255).astype(np.uint8)).resize((56, 56), Image.Resampling.BOX)
    return _crop(np.asarray(small))


class DigitSource:
    """Real digits to build non-digits from: MNIST train for training, MNIST test for validation,
    so the two never share a handwritten digit. A third are pen-stroke digits instead."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = images
        self.labels = labels

    def pick(self, rng: np.random.Generator, exclude: frozenset[int] = frozenset()) -> np.ndarray:
        allowed = [d for d in range(10) if d not in exclude]
        if rng.random() < 0.3:
            return _pen_image(allowed[int(rng.integers(len(allowed)))], rng)
        while True:
            i = int(rng.integers(len(self.images)))
            if int(self.labels[i]) not in exclude:
                return _crop(self.images[i])


def _side_by_side(parts: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    height = max(p.shape[0] for p in parts)
    gap = int(rng.integers(1, 6))
    out = np.zeros((height + 4, sum(p.shape[1] for p in parts) + gap * (len(parts) + 1)), np.uint8)
    x = gap
    for p in parts:
        # Scale each digit a little and sit them on a roughly common base line.
        top = int(rng.integers(0, height - p.shape[0] + 1)) + 2
        out[top : top + p.shape[0], x : x + p.shape[1]] = np.maximum(
            out[top : top + p.shape[0], x : x + p.shape[1]], p
        )
        x += p.shape[1] + gap
    return out


def two_digits(source: DigitSource) -> Generator:
    def draw(rng: np.random.Generator, split: Split) -> np.ndarray:
        count = 2 if rng.random() < 0.8 else 3
        parts = [source.pick(rng) for _ in range(count)]
        parts = [_rescale(p, 28 / max(p.shape[0], 1)) for p in parts]
        return redraw_digit(_side_by_side(parts, rng), rng, height_share=(0.2, 0.6))

    return draw


def _rescale(image: np.ndarray, factor: float) -> np.ndarray:
    h, w = image.shape
    size = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


# A slashed zero is how many people write 0, and a 7's own stroke is a slash.
SLASH_FREE = frozenset({0, 7})


def slashed_digit(source: DigitSource) -> Generator:
    def draw(rng: np.random.Generator, split: Split) -> np.ndarray:
        digit = source.pick(rng, exclude=SLASH_FREE)
        digit = _rescale(digit, 28 / max(digit.shape))
        # A square box around the digit, so the slash crosses it even when the digit is a 1.
        side = 28 + 8
        box = np.zeros((side, side), dtype=np.uint8)
        left = (side - digit.shape[1]) // 2
        top = (side - digit.shape[0]) // 2
        box[top : top + digit.shape[0], left : left + digit.shape[1]] = digit
        img = Image.fromarray(box)
        lo, hi = rng.uniform(0, 7, size=2), side - rng.uniform(0, 7, size=2)
        rising = ((lo[0], hi[1]), (hi[0], lo[1]))
        falling = ((lo[0], lo[1]), (hi[0], hi[1]))
        choice = rng.random()
        lines = [rising] if choice < 0.5 else [falling] if choice < 0.75 else [rising, falling]
        pen = ImageDraw.Draw(img)
        for p, q in lines:
            pen.line([p, q], fill=255, width=3)
        return redraw_digit(np.asarray(img), rng, height_share=(0.35, 0.9))

    return draw


# --- sets -----------------------------------------------------------------------------------------


GENERATOR_NAMES = (
    "letters",
    "scribbles",
    "shapes",
    "doodles",
    "two digits side by side",
    "digits with a slash through",
    "filled shapes",
    "pen letters",
)


def generators(source: DigitSource) -> dict[str, Generator]:
    made = (
        letter,
        scribble,
        shape,
        doodle,
        two_digits(source),
        slashed_digit(source),
        filled_shape,
        pen_letter,
    )
    return dict(zip(GENERATOR_NAMES, made, strict=True))


PNG_STYLES = ("alpha", "alpha", "white_on_black", "black_on_white")


def as_served(ink: np.ndarray, style: str) -> np.ndarray | None:
    """Ink map -> PNG -> serving preprocessing -> uint8 (28, 28); None if it counts as empty."""
    try:
        return preprocess_bytes(to_png(ink, style)).image
    except EmptyDrawingError:
        return None


def nondigit_set(
    generator: Generator, n: int, seed: int, split: Split, *, progress: str | None = None
) -> np.ndarray:
    """n drawings from one generator as the model sees them: uint8 (n, 28, 28)."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    out: list[np.ndarray] = []
    with tqdm(total=n, desc=progress or "non-digits", disable=progress is None, leave=False) as bar:
        while len(out) < n:
            image = as_served(generator(rng, split), PNG_STYLES[len(out) % len(PNG_STYLES)])
            if image is not None:
                out.append(image)
                bar.update(1)
    return np.stack(out)


__all__ = [
    "GENERATOR_NAMES",
    "HELDOUT",
    "LETTERS",
    "LOOKALIKES",
    "TEMPLATES",
    "TRAIN",
    "DigitSource",
    "Split",
    "generators",
    "nondigit_set",
]
