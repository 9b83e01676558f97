"""Image conversions for the web app: canvas PNG in, small PNGs and data URIs out. No torch here."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

# A pixel counts as ink when it differs from the background by more than this (0..255).
INK_LEVEL = 64
# Fewer ink pixels than this is an empty canvas (a 20 px brush leaves hundreds for a dot).
MIN_INK_PIXELS = 10


class NotAnImage(ValueError):
    """The bytes could not be decoded as an image."""


def _open(data: bytes) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise NotAnImage(str(exc)) from exc
    return img


def to_png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def flatten_drawing(data: bytes) -> bytes:
    """The canvas PNG (RGBA, maybe transparent) as a greyscale PNG of white ink on black.

    What the api receives and PostgreSQL stores: a quarter of the bytes of the RGBA export, and
    the same picture whatever the canvas did with transparency.
    """
    img = _open(data).convert("RGBA")
    backdrop = Image.new("RGBA", img.size, (0, 0, 0, 255))
    return to_png(Image.alpha_composite(backdrop, img).convert("L"))


def ink_pixel_count(data: bytes) -> int:
    """How many pixels differ clearly from the background (the median of the border)."""
    img = _open(data).convert("RGBA")
    backdrop = Image.new("RGBA", img.size, (0, 0, 0, 255))
    lum = np.asarray(Image.alpha_composite(backdrop, img).convert("L"), dtype=np.int16)
    border = np.concatenate([lum[0, :], lum[-1, :], lum[:, 0], lum[:, -1]])
    background = int(np.median(border))
    return int((np.abs(lum - background) > INK_LEVEL).sum())


def is_blank(data: bytes | None) -> bool:
    """True when there is no drawing, or one with no visible ink."""
    if not data:
        return True
    try:
        return ink_pixel_count(data) < MIN_INK_PIXELS
    except NotAnImage:
        return True


def enlarge(data: bytes, size: int) -> bytes:
    """Scale a small image up to size x size with hard pixel edges (for the 28x28 input)."""
    img = _open(data)
    return to_png(img.resize((size, size), Image.Resampling.NEAREST))


def thumbnail(data: bytes, size: int = 56) -> bytes:
    """A size x size greyscale PNG of a stored drawing."""
    img = _open(data).convert("L")
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return to_png(img)


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def thumbnail_uri(data: bytes | None, size: int = 56) -> str | None:
    """A data URI for a table cell, or None when the stored bytes are not an image."""
    if not data:
        return None
    try:
        return data_uri(thumbnail(data, size))
    except NotAnImage:
        return None
