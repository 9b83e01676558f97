"""Real handwriting that is not MNIST: USPS (16x16 scans) and UCI optdigits (32x32 bitmaps).

Both are size-normalised already, with framing and stroke widths unlike a canvas drawing, so each
digit is rendered onto a 280x280 canvas at a random size and place and then goes through the very
same preprocessing as a drawing. Training may use USPS train and optdigits tra; evaluation only
uses the held-out parts (USPS test, optdigits windep).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from digit_predictor.config import DataSettings
from digit_predictor.ml.preprocess import EmptyDrawingError, preprocess_bytes, preprocess_ink
from digit_predictor.ml.synthetic_digits import CANVAS, to_png

# sha256 from the data directory's SOURCE.md.
SHA256: dict[str, str] = {
    "usps/zip.train.gz": "66ebf231ab51f2cf6ac1a892d0f98ccffee1079d7a5db638c1f11f366046ca16",
    "usps/zip.test.gz": "8dacc3c6e136af6c3488de9e5113a7daf140c8c2f1f0b61c54ee02f03f1a962f",
    "optdigits/optdigits-orig.tra": (
        "a4eff709680076cae40420343de292b5960fc2b0da439b8a57c3d14124113bda"
    ),
    "optdigits/optdigits-orig.windep": (
        "c09ab8735d588fdf980724f10a5072c0b757037dc80b448b2f6a10392751c9d6"
    ),
}
TRAIN_FILES = {"USPS train": "usps/zip.train.gz", "optdigits tra": "optdigits/optdigits-orig.tra"}
HELDOUT_FILES = {
    "USPS test": "usps/zip.test.gz",
    "optdigits windep": "optdigits/optdigits-orig.windep",
}


class ExtraDigitsError(RuntimeError):
    """An extra-digits file is missing or not the published one."""


def default_extra_dir() -> Path:
    """$EXTRA_DIGITS_DIR (environment or .env), else ../shared/data/extra-digits."""
    return DataSettings().extra_digits_dir


def _checked(root: Path, rel: str) -> Path:
    path = root / rel
    if not path.is_file():
        raise ExtraDigitsError(
            f"{path} is missing; see SOURCE.md in {root} for where the extra digits come from"
        )
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SHA256[rel]:
        raise ExtraDigitsError(f"{path} has sha256 {digest}, expected {SHA256[rel]}")
    return path


def load_usps(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> ink float32 (N, 16, 16) in 0..1 (1 = ink), labels int64 (N,)."""
    with gzip.open(path, "rt") as handle:
        rows = np.loadtxt(handle, dtype=np.float32)
    labels = rows[:, 0].astype(np.int64)
    ink = (rows[:, 1:].reshape(-1, 16, 16) + 1.0) / 2.0
    return np.clip(ink, 0.0, 1.0), labels


def load_optdigits(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """-> ink float32 (N, 32, 32) of 0/1, labels int64 (N,). The text header is skipped."""
    lines = path.read_text(encoding="ascii").splitlines()
    images, labels, block = [], [], []
    for line in lines:
        text = line.strip()
        if len(text) == 32 and set(text) <= {"0", "1"}:
            block.append([c == "1" for c in text])
        elif block and text.isdigit():
            if len(block) == 32:
                images.append(block)
                labels.append(int(text))
            block = []
        else:
            block = []
    return np.asarray(images, dtype=np.float32), np.asarray(labels, dtype=np.int64)


def render_on_canvas(
    small: np.ndarray, rng: np.random.Generator, height_share: tuple[float, float] = (0.4, 0.85)
) -> np.ndarray:
    """Blow a small scan up to a random size and put it somewhere on an empty 280x280 canvas."""
    side = int(rng.uniform(*height_share) * CANVAS)
    big = F.interpolate(
        torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None, None],
        size=(side, side),
        mode="bilinear",
    )[0, 0].numpy()
    canvas = np.zeros((CANVAS, CANVAS), dtype=np.float32)
    top, left = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
    canvas[top : top + side, left : left + side] = np.clip(big, 0.0, 1.0)
    return canvas


def _load(root: Path, rel: str) -> tuple[np.ndarray, np.ndarray]:
    path = _checked(root, rel)
    return load_usps(path) if rel.startswith("usps/") else load_optdigits(path)


def load_part(name: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ink maps (0..1) and labels of one named part: "USPS train", "optdigits tra",
    "USPS test" or "optdigits windep", checked against its published sha256."""
    rel = {**TRAIN_FILES, **HELDOUT_FILES}.get(name)
    if rel is None:
        known = ", ".join([*TRAIN_FILES, *HELDOUT_FILES])
        raise ValueError(f"unknown part {name!r}; choose one of: {known}")
    return _load(root or default_extra_dir(), rel)


def training_digits(
    root: Path | None = None, seed: int = 1
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """USPS train and optdigits tra as preprocessed uint8 (N, 28, 28) digits with labels."""
    root = root or default_extra_dir()
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, rel in TRAIN_FILES.items():
        inks, labels = _load(root, rel)
        images, kept = [], []
        for ink, label in zip(inks, labels, strict=True):
            try:
                images.append(preprocess_ink(render_on_canvas(ink, rng)).image)
                kept.append(label)
            except EmptyDrawingError:
                continue
        out[name] = (np.stack(images), np.asarray(kept, dtype=np.int64))
    return out


def heldout_digits(
    root: Path | None = None, seed: int = 2, limit: int | None = None
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """USPS test and optdigits windep, drawn on a canvas, PNG round trip, preprocessed.

    A digit the preprocessing rejects as empty is kept as an all-black image, so it counts as a
    mistake rather than silently disappearing.
    """
    root = root or default_extra_dir()
    rng = np.random.default_rng(seed)
    out: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, rel in HELDOUT_FILES.items():
        inks, labels = _load(root, rel)
        if limit is not None:
            inks, labels = inks[:limit], labels[:limit]
        images = []
        for ink in inks:
            try:
                images.append(preprocess_bytes(to_png(render_on_canvas(ink, rng))).image)
            except EmptyDrawingError:
                images.append(np.zeros((28, 28), dtype=np.uint8))
        out[name] = (np.stack(images), labels)
    return out
