"""decode_image accepts PNG and JPEG only; every decoding failure becomes InvalidImageError.

The api decodes through `preprocess_bytes`, which hands the usual PNGs to libspng instead of
PIL: every refusal is checked through both doors."""

from __future__ import annotations

import contextlib
import struct
import zlib
from collections.abc import Callable

import numpy as np
import pytest
from PIL import Image

from digit_predictor.ml.preprocess import (
    EmptyDrawingError,
    InvalidImageError,
    decode_image,
    preprocess_bytes,
)

from .conftest import png_bytes


def small_png() -> bytes:
    img = Image.new("RGBA", (280, 280), (0, 0, 0, 0))
    img.paste((255, 255, 255, 255), (100, 40, 130, 240))
    return png_bytes(img)


Decode = Callable[..., object]
DECODERS = pytest.mark.parametrize(
    "decode", [decode_image, preprocess_bytes], ids=["decode_image", "preprocess_bytes"]
)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header that claims a huge image (a decompression bomb's opening)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 1024)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_png_and_jpeg_decode_fully() -> None:
    img = decode_image(small_png())
    assert img.size == (280, 280) and img.format == "PNG"
    jpeg = png_bytes(Image.new("L", (64, 48), 200), fmt="JPEG")
    assert decode_image(jpeg).size == (64, 48)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello, world", b"<svg xmlns='http://www.w3.org/2000/svg'/>", b"\x00" * 100],
    ids=["empty", "text", "svg", "zeros"],
)
@DECODERS
def test_non_images_are_rejected(data: bytes, decode: Decode) -> None:
    with pytest.raises(InvalidImageError):
        decode(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "TIFF", "WEBP"])
@DECODERS
def test_other_image_formats_are_rejected_with_a_hint(fmt: str, decode: Decode) -> None:
    data = png_bytes(Image.new("RGB", (28, 28)), fmt=fmt)
    with pytest.raises(InvalidImageError, match="PNG or JPEG"):
        decode(data)


@DECODERS
def test_truncated_png_is_rejected(decode: Decode) -> None:
    data = small_png()
    with pytest.raises(InvalidImageError, match="truncated"):
        decode(data[: len(data) // 2])


@DECODERS
def test_truncated_jpeg_is_rejected(decode: Decode) -> None:
    rng = np.random.default_rng(0)
    noisy = Image.fromarray(rng.integers(0, 255, (200, 200), dtype=np.uint8))
    data = png_bytes(noisy, fmt="JPEG")
    with pytest.raises(InvalidImageError):
        decode(data[: len(data) // 3])


@DECODERS
def test_oversize_image_is_rejected_before_decoding(decode: Decode) -> None:
    data = png_bytes(Image.new("L", (3000, 10)))
    with pytest.raises(InvalidImageError, match="2048"):
        decode(data)
    with pytest.raises(InvalidImageError, match="too many pixels"):
        decode(png_bytes(Image.new("L", (300, 300))), max_side=280)
    fits = png_bytes(Image.new("L", (280, 280)))
    with contextlib.suppress(EmptyDrawingError):  # a blank canvas: decoded, nothing drawn
        decode(fits, max_side=280)


@pytest.mark.parametrize("side", [4096, 50_000, 1_000_000])
@DECODERS
def test_small_file_declaring_a_huge_image_is_rejected(side: int, decode: Decode) -> None:
    data = png_declaring(side, side)
    assert len(data) < 200
    with pytest.raises(InvalidImageError, match="too many pixels"):
        decode(data)


@DECODERS
def test_corrupt_bytes_never_escape_as_another_exception(decode: Decode) -> None:
    data = bytearray(small_png())
    rng = np.random.default_rng(1)
    for _ in range(60):
        damaged = bytearray(data)
        for pos in rng.integers(8, len(damaged), size=4):
            damaged[int(pos)] = int(rng.integers(0, 256))
        with contextlib.suppress(InvalidImageError, EmptyDrawingError):  # any other fails the test
            decode(bytes(damaged))


def test_preprocess_bytes_raises_invalid_image_for_garbage() -> None:
    with pytest.raises(InvalidImageError):
        preprocess_bytes(b"GIF89a not really")


def test_errors_are_value_errors_for_the_api() -> None:
    assert issubclass(InvalidImageError, ValueError)


def test_an_unidentifiable_image_gets_a_message_for_people() -> None:
    with pytest.raises(InvalidImageError) as info:
        decode_image(b"\xff\xd8\xff" + b"x" * 50)  # JPEG magic, then nothing JPEG-like
    message = str(info.value)
    assert "send a valid PNG or JPEG" in message
    assert "object at 0x" not in message
