"""Turn a drawing into what the model expects, the way MNIST's makers prepared their digits.

Crop to the ink, fit it into a 20x20 box (aspect ratio kept, anti-aliased), and place it in a
28x28 field so that its centre of mass is at the centre. The api, the evaluation and the tests all
go through `preprocess_image`, so the model always sees the same kind of input.
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyspng
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, UnidentifiedImageError

if TYPE_CHECKING:  # torch only where a caller asks for a tensor: the api's workers run without it
    import torch

# Pixel statistics of the MNIST training set; the model is trained on (x - MEAN) / STD.
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

FIELD = 28
BOX = 20
CENTRE = 14.0  # centre of mass target, in pixel-index coordinates

# Relative ink levels (of the brightest ink pixel) that decide what counts as ink.
NOISE_FLOOR = 0.1
BBOX_LEVEL = 0.2
# Less contrast than this between ink and background means nothing was drawn.
MIN_CONTRAST = 0.15
# Ink whose longest side is under this share of the image's shorter side is a dot or a speck.
MIN_EXTENT_SHARE = 0.1
MIN_EXTENT_PX = 3
# Stroke width, in 28x28 pixels, that MNIST digits have; strokes are brought into this range.
MIN_STROKE = 1.8
MAX_STROKE = 4.5
TARGET_THICK_STROKE = 3.5

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"


class InvalidImageError(ValueError):
    """The bytes are not an image this service accepts; the message says what to fix."""


class EmptyDrawingError(ValueError):
    """Nothing (or only a dot or a speck) was drawn."""


@dataclass
class Preprocessed:
    image: np.ndarray  # uint8 (28, 28), white ink on black: exactly what the model saw

    @property
    def array(self) -> np.ndarray:
        """float32 (1, 28, 28), normalised with MNIST_MEAN / MNIST_STD: the model's input."""
        return to_model_array(self.image)

    @property
    def tensor(self) -> torch.Tensor:
        """`array` as a torch tensor, for training, evaluation and explanations."""
        return to_model_tensor(self.image)


def open_image(data: bytes, *, max_side: int = 2048) -> Image.Image:
    """Read the header of PNG or JPEG bytes, refusing anything else and oversize images.
    Nothing is decoded yet: `decode_image` does that."""
    if not data:
        raise InvalidImageError("the upload is empty; send a PNG or JPEG image")
    if not (data.startswith(PNG_MAGIC) or data.startswith(JPEG_MAGIC)):
        raise InvalidImageError("not a PNG or JPEG image; send the drawing as PNG or JPEG")
    with _decoding_errors(max_side):
        img = Image.open(io.BytesIO(data))
        if img.format not in ("PNG", "JPEG"):
            raise InvalidImageError(
                f"not a PNG or JPEG image (found {img.format}); send PNG or JPEG"
            )
        width, height = img.size  # from the header: nothing decoded yet
        if width < 1 or height < 1:
            raise InvalidImageError("the image has no pixels")
        if width > max_side or height > max_side:
            raise InvalidImageError(
                f"too many pixels: the image is {width}x{height}, the limit is "
                f"{max_side} pixels on either side; scale it down"
            )
    return img


def decode_image(data: bytes, *, max_side: int = 2048) -> Image.Image:
    """Decode PNG or JPEG bytes, refusing anything else, oversize images and truncated files."""
    img = open_image(data, max_side=max_side)
    with _decoding_errors(max_side):
        img.load()
    return img


@contextmanager
def _decoding_errors(max_side: int) -> Iterator[None]:
    """Every way decoding can fail becomes an InvalidImageError that says what to fix."""
    try:
        with warnings.catch_warnings():
            # PIL only warns about mid-sized bombs; treat the warning as the error it is.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except InvalidImageError:
        raise
    except UnidentifiedImageError as exc:
        # PIL's own message names the in-memory buffer object, which helps nobody.
        raise InvalidImageError(
            "the image could not be decoded (corrupt PNG/JPEG header); send a valid PNG or JPEG"
        ) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImageError(
            f"too many pixels: the image declares more than the limit of {max_side}x{max_side}"
        ) from exc
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise InvalidImageError(
            f"the image could not be decoded (truncated or corrupt PNG/JPEG): {exc}"
        ) from exc


# PNG colour types whose 8-bit pixels libspng hands over as stored (grey+alpha it cannot),
# and PIL's mode for each.
_SPNG_MODES = {0: "L", 2: "RGB", 6: "RGBA"}


def _png_pixels(data: bytes, img: Image.Image) -> np.ndarray | None:
    """The pixels of an 8-bit grey, RGB or RGBA PNG (what browsers' canvases
    send) as PIL would decode them, by libspng (about 0.6x PIL's time: faster inflate and
    unfiltering); None for other PNGs and for JPEG, which PIL decodes.

    The header was read and checked by `open_image`; IHDR is the first chunk, so its bit depth
    and colour type are at fixed offsets.
    """
    if img.format != "PNG" or len(data) < 26 or data[24] != 8:
        return None
    mode = _SPNG_MODES.get(data[25])
    if mode is None or mode != img.mode:
        return None
    try:
        pixels: np.ndarray = pyspng.load(data, mode)
    except Exception as exc:  # RuntimeError with libspng's reason: truncated, bad CRC, limits
        raise InvalidImageError(
            f"the image could not be decoded (truncated or corrupt PNG): {exc}"
        ) from exc
    return pixels


def preprocess_bytes(data: bytes, *, max_side: int = 2048) -> Preprocessed:
    """PNG or JPEG bytes -> the model's 28x28 input (what the api serves)."""
    img = open_image(data, max_side=max_side)
    pixels = _png_pixels(data, img)
    if pixels is None:
        with _decoding_errors(max_side):
            img.load()
        return preprocess_image(img)
    channel = _ink_channel(pixels, img.mode)
    if channel is None:
        return preprocess_ink(ink_map(Image.fromarray(pixels, mode=img.mode)))
    return _preprocess_channel(*channel)


def preprocess_image(img: Image.Image) -> Preprocessed:
    """Drawing -> MNIST-like 28x28 digit. Raises EmptyDrawingError when nothing was drawn."""
    channel = ink_channel(img)
    if channel is None:  # 16-bit, float, or partly transparent: the general float path
        return preprocess_ink(ink_map(img))
    return _preprocess_channel(*channel)


def preprocess_ink(ink: np.ndarray) -> Preprocessed:
    """Same as `preprocess_image` for an ink map: float (H, W), 0 = background, higher = ink."""
    ink = np.asarray(ink, dtype=np.float32)
    peak = float(ink.max()) if ink.size else 0.0
    if peak < MIN_CONTRAST:
        raise EmptyDrawingError("nothing was drawn: draw a digit first")
    ink = ink / peak
    ink[ink < NOISE_FLOOR] = 0.0

    rows, cols = _bbox(ink)
    _refuse_dots(rows, cols, ink.shape)
    return _preprocess_crop(ink[rows[0] : rows[1], cols[0] : cols[1]])


def _refuse_dots(rows: tuple[int, int], cols: tuple[int, int], shape: tuple[int, ...]) -> None:
    extent = max(rows[1] - rows[0], cols[1] - cols[0])
    min_extent = max(MIN_EXTENT_PX, MIN_EXTENT_SHARE * min(shape))
    if extent < min_extent:
        raise EmptyDrawingError("only a dot was drawn: draw a digit first")


def _preprocess_channel(values: np.ndarray, levels: np.ndarray) -> Preprocessed:
    """`preprocess_ink(levels[values])`, without building that float map of the whole canvas.

    `values` is one uint8 channel, `levels` the ink level of each of its 256 values (monotonic).
    Peak, noise floor and bounding box are decided on the 256 levels and on uint8 comparisons;
    only the cropped digit becomes float. Same arithmetic per pixel, so the same result.
    """
    low, high = int(values.min()), int(values.max())
    peak = max(float(levels[low]), float(levels[high]))  # levels is monotonic
    if peak < MIN_CONTRAST:
        raise EmptyDrawingError("nothing was drawn: draw a digit first")
    levels = levels / peak
    levels[levels < NOISE_FLOOR] = 0.0
    clear = np.flatnonzero(levels >= BBOX_LEVEL)  # values that count as clearly ink
    if clear.size == 0:
        raise EmptyDrawingError("nothing was drawn: draw a digit first")
    # Monotonic levels: "clearly ink" is one side of a threshold on the raw value.
    mask = values >= clear[0] if levels[255] >= levels[0] else values <= clear[-1]
    rows, cols = _mask_bbox(mask)
    _refuse_dots(rows, cols, values.shape)
    return _preprocess_crop(levels[values[rows[0] : rows[1], cols[0] : cols[1]]])


def _preprocess_crop(crop: np.ndarray) -> Preprocessed:
    """The cropped ink (float, peak 1) -> the 28x28 digit."""
    crop = _normalise_stroke(crop)
    patch = _fit_box(crop)
    field = _place_by_centre_of_mass(patch)
    image = np.clip(np.rint(field * 255.0), 0, 255).astype(np.uint8)
    return Preprocessed(image=image)


def to_model_array(image: np.ndarray) -> np.ndarray:
    """uint8 (28, 28) white-on-black -> normalised float32 (1, 28, 28)."""
    x = np.ascontiguousarray(image, dtype=np.float32) / np.float32(255.0)
    return ((x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD))[None]


def to_model_tensor(image: np.ndarray) -> torch.Tensor:
    """`to_model_array` as a torch tensor."""
    import torch  # here, not at the top: serving imports this module without torch

    return torch.from_numpy(to_model_array(image))


def ink_channel(img: Image.Image) -> tuple[np.ndarray, np.ndarray] | None:
    """The drawing as one uint8 channel and the ink level (0..1) of each of its 256 values,
    for the usual drawings (`ink_map`'s result is `levels[values]`); None for the rest."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("PA", "RGBa", "La"):
        img = img.convert("RGBA")
    elif img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        return None
    elif img.mode not in ("L", "LA", "RGB", "RGBA"):  # 1-bit, CMYK (JPEG): greyscale by PIL
        img = img.convert("L")
    return _ink_channel(np.asarray(img), img.mode)


def _ink_channel(pixels: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray] | None:
    """`ink_channel` for uint8 pixels of mode L (H, W), LA, RGB or RGBA (H, W, channels)."""
    if mode in ("RGBA", "LA"):
        alpha = np.ascontiguousarray(pixels[..., -1])  # one copy: then each pass is fast
        lowest, highest = int(alpha.min()), int(alpha.max())
        if highest < 128:  # every pixel under half opaque
            raise EmptyDrawingError("the image is fully transparent: draw a digit first")
        if highest - lowest >= 128:
            if np.count_nonzero(alpha >= 128) * 2 < alpha.size:
                # A transparent canvas with opaque strokes: the alpha channel is the ink.
                return alpha, _UNIT_LEVELS.copy()
            return None  # mostly opaque with transparent parts: flattened in float
    if mode == "L":
        lum = pixels
    elif mode == "LA":
        lum = np.ascontiguousarray(pixels[..., 0])
    else:
        # Greyscale of the colour channels by PIL (ITU-R 601-2 weights, as `_luminance`), on
        # the same memory.
        height, width = pixels.shape[:2]
        contiguous = np.ascontiguousarray(pixels)
        colour = Image.frombuffer(mode, (width, height), contiguous, "raw", mode, 0, 1)
        lum = np.asarray(colour.convert("L"))
    border = np.concatenate([lum[0, :], lum[-1, :], lum[:, 0], lum[:, -1]])
    return lum, _ink_levels(_UNIT_LEVELS.copy(), _median_level(border))


# Value v of a uint8 channel -> v / 255 as float32, as the float path computes it per pixel.
_UNIT_LEVELS = np.arange(256, dtype=np.float32) / 255.0


def ink_map(img: Image.Image) -> np.ndarray:
    """Where the ink is, 0..1, whatever the mode, polarity or channel the drawing uses."""
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        values = np.asarray(img, dtype=np.float64)
        lo, hi = float(values.min()), float(values.max())
        lum = ((values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)).astype(np.float32)
        return _ink_from_luminance(lum)
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = np.asarray(img.convert("RGBA"), dtype=np.float32) / 255.0
        lum = _luminance(rgba[..., :3])
        alpha = rgba[..., 3]
        if float(alpha.max()) < 0.5:
            raise EmptyDrawingError("the image is fully transparent: draw a digit first")
        if float(alpha.max() - alpha.min()) > 0.5:
            if float((alpha > 0.5).mean()) < 0.5:
                # A transparent canvas with opaque strokes: the alpha channel is the ink,
                # whatever colour the strokes are.
                return np.asarray(alpha, dtype=np.float32)
            # Mostly opaque with transparent parts: flatten onto the opaque colour.
            backdrop = float(np.median(lum[alpha > 0.5]))
            lum = alpha * lum + (1.0 - alpha) * backdrop
        return _ink_from_luminance(lum)
    lum = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    return _ink_from_luminance(lum)


def _luminance(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), dtype=np.float32)


def _ink_from_luminance(lum: np.ndarray) -> np.ndarray:
    """Detect light-on-dark vs dark-on-light from the border and subtract the background."""
    border = np.concatenate([lum[0, :], lum[-1, :], lum[:, 0], lum[:, -1]])
    return _ink_levels(lum, float(np.median(border)))


def _median_level(values: np.ndarray) -> float:
    """`np.median(values / 255)` in float32, as the float path computes it, for uint8 values:
    the middle one or two found by a partition of the uint8s, a third of the time."""
    n = values.size
    middle = [(n - 1) // 2] if n % 2 else [n // 2 - 1, n // 2]
    part = np.partition(values, middle)
    levels = [np.float32(part[i]) / np.float32(255.0) for i in middle]
    return float(levels[0] if n % 2 else (levels[0] + levels[1]) / np.float32(2.0))


def _ink_levels(lum: np.ndarray, background: float) -> np.ndarray:
    """Ink levels from luminance, given the background's (the border's median)."""
    if background > 0.5:
        lum = 1.0 - lum
        background = 1.0 - background
    ink = (lum - background) / max(1.0 - background, 1e-6)
    return np.clip(ink, 0.0, 1.0).astype(np.float32)


def _bbox(ink: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open (row, col) ranges of the pixels that are clearly ink."""
    return _mask_bbox(ink >= BBOX_LEVEL)


def _mask_bbox(mask: np.ndarray) -> tuple[tuple[int, int], tuple[int, int]]:
    if not mask.any():
        raise EmptyDrawingError("nothing was drawn: draw a digit first")
    row_idx = np.flatnonzero(mask.any(axis=1))
    col_idx = np.flatnonzero(mask.any(axis=0))
    return (int(row_idx[0]), int(row_idx[-1]) + 1), (int(col_idx[0]), int(col_idx[-1]) + 1)


def stroke_width(ink: np.ndarray) -> float:
    """Typical stroke width in pixels: twice the ink area over its boundary length."""
    solid = ink >= 0.5
    area = int(solid.sum())
    if area == 0:
        return 1.0
    padded = np.zeros((solid.shape[0] + 2, solid.shape[1] + 2), dtype=bool)
    padded[1:-1, 1:-1] = solid
    interior = solid & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    boundary = max(area - int(interior.sum()), 1)
    return 2.0 * area / boundary


def _normalise_stroke(crop: np.ndarray) -> np.ndarray:
    """Thicken hairlines and thin very heavy strokes so they end up MNIST-like at 28x28.

    A hairline on a big canvas would fade to a grey smear once shrunk 10x; a small digit drawn
    with a wide brush would become a blob. Both are brought back into MNIST's range.
    """
    scale = BOX / max(crop.shape)
    width = stroke_width(crop)
    out_width = width * scale
    if out_width < MIN_STROKE and scale < 1.0:
        radius = math.ceil((MIN_STROKE / scale - width) / 2.0)
        if radius >= 1:
            padded = np.pad(crop, radius)
            grown = _max_filter(padded, radius)
            rows, cols = _bbox(grown)
            return grown[rows[0] : rows[1], cols[0] : cols[1]]
    elif out_width > MAX_STROKE:
        # Erode, but never by so much that the thinnest parts of the stroke could vanish.
        radius = min(
            math.floor((width - TARGET_THICK_STROKE / scale) / 2.0), math.floor(0.3 * width)
        )
        if radius >= 1:
            shrunk = -_max_filter(-crop, radius)
            if float(shrunk.max()) >= BBOX_LEVEL:
                rows, cols = _bbox(shrunk / float(shrunk.max()))
                return shrunk[rows[0] : rows[1], cols[0] : cols[1]]
    return crop


def _max_filter(values: np.ndarray, radius: int) -> np.ndarray:
    """Square max filter (grey dilation) of the given radius; same shape as the input.

    Separable: the max over rows of the max over columns, each a sliding window."""
    out = np.asarray(values, dtype=np.float32)
    size = 2 * radius + 1
    for axis in (1, 0):
        pad = [(0, 0), (0, 0)]
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, constant_values=-np.inf)
        out = sliding_window_view(padded, size, axis=axis).max(axis=-1)
    return np.ascontiguousarray(out, dtype=np.float32)


def _fit_box(crop: np.ndarray) -> np.ndarray:
    """Scale so the longer side is BOX pixels, aspect ratio kept, anti-aliased.

    PIL's bilinear resize of a float image widens its filter when shrinking (the anti-aliasing
    torch's `interpolate(..., antialias=True)` was modelled on: same pixels to about 1e-6)."""
    height, width = crop.shape
    scale = BOX / max(height, width)
    new_h = max(1, min(BOX, round(height * scale)))
    new_w = max(1, min(BOX, round(width * scale)))
    picture = Image.fromarray(np.ascontiguousarray(crop, dtype=np.float32))  # mode "F"
    resized = picture.resize((new_w, new_h), Image.Resampling.BILINEAR)
    patch = np.clip(np.asarray(resized, dtype=np.float32), 0.0, None)
    peak = float(patch.max())
    if peak <= 0.0:
        raise EmptyDrawingError("nothing was drawn: draw a digit first")
    # Thin strokes shrink to grey; MNIST strokes are saturated in the middle.
    return np.asarray(np.clip(patch / peak, 0.0, 1.0), dtype=np.float32)


def _place_by_centre_of_mass(patch: np.ndarray) -> np.ndarray:
    """Put the patch into the 28x28 field with its centre of mass at the centre (sub-pixel)."""
    height, width = patch.shape
    mass = float(patch.sum())
    # Weighted by the row and column sums: the same sums as over every pixel, fewer products.
    com_y = float(patch.sum(axis=1, dtype=np.float64) @ np.arange(height)) / mass
    com_x = float(patch.sum(axis=0, dtype=np.float64) @ np.arange(width)) / mass
    # Keep the whole patch inside the field, even for lopsided digits.
    top = min(max(CENTRE - com_y, 0.0), float(FIELD - height))
    left = min(max(CENTRE - com_x, 0.0), float(FIELD - width))
    top_i, left_i = math.floor(top), math.floor(left)
    fy, fx = top - top_i, left - left_i
    field = np.zeros((FIELD + 1, FIELD + 1), dtype=np.float32)
    # Bilinear split of a sub-pixel shift: keeps the centre of mass exactly where it is put.
    for dy, wy in ((0, 1.0 - fy), (1, fy)):
        for dx, wx in ((0, 1.0 - fx), (1, fx)):
            weight = wy * wx
            if weight > 0.0:
                y0, x0 = top_i + dy, left_i + dx
                field[y0 : y0 + height, x0 : x0 + width] += weight * patch
    field = field[:FIELD, :FIELD]
    # A sub-pixel shift spreads the brightest pixels a little; MNIST strokes peak at 255.
    return np.asarray(field / max(float(field.max()), 1e-6), dtype=np.float32)
