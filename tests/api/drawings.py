"""Drawings as the web app sends them (280x280 RGBA PNG, transparent canvas, opaque strokes),
plus the hostile and broken inputs the api must refuse. Shared with the reliability tests."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image, ImageDraw

CANVAS = 280

# Rough stroke paths (in canvas pixels) for a few digits.
STROKES: dict[int, list[list[tuple[int, int]]]] = {
    0: [
        [
            (140, 50),
            (90, 90),
            (80, 150),
            (100, 220),
            (140, 240),
            (185, 215),
            (200, 150),
            (190, 85),
            (140, 50),
        ]
    ],
    1: [[(120, 80), (150, 50), (150, 240)]],
    4: [[(170, 240), (170, 50), (80, 180), (210, 180)]],
    7: [[(80, 60), (200, 60), (120, 240)]],
}


def png_bytes(img: Image.Image, **save: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format="PNG", **save)
    return out.getvalue()


def drawing(
    digit: int = 1,
    *,
    width: int = 18,
    shift: tuple[int, int] = (0, 0),
    color: tuple[int, int, int, int] = (255, 255, 255, 255),
) -> Image.Image:
    """An RGBA canvas with transparent background and the digit's strokes."""
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    for path in STROKES[digit]:
        moved = [(x + shift[0], y + shift[1]) for x, y in path]
        draw.line(moved, fill=color, width=width, joint="curve")
    return img


def drawing_png(digit: int = 1, **kwargs: object) -> bytes:
    return png_bytes(drawing(digit, **kwargs))  # type: ignore[arg-type]


def drawing_jpeg(digit: int = 7) -> bytes:
    # JPEG has no alpha: black strokes on white, as a photo or a paint program would give.
    img = Image.new("RGB", (CANVAS, CANVAS), "white")
    draw = ImageDraw.Draw(img)
    for path in STROKES[digit]:
        draw.line(path, fill="black", width=18, joint="curve")
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=90)
    return out.getvalue()


def blank_canvas_png() -> bytes:
    return png_bytes(Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0)))


def blank_white_png() -> bytes:
    return png_bytes(Image.new("RGB", (CANVAS, CANVAS), "white"))


def dot_png() -> bytes:
    img = Image.new("RGBA", (CANVAS, CANVAS), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((138, 138, 142, 142), fill=(255, 255, 255, 255))
    return png_bytes(img)


def other_format(fmt: str) -> bytes:
    out = io.BytesIO()
    drawing(1).convert("RGB").save(out, format=fmt)
    return out.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels: a decompression bomb's shape."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    # One row of zeros, compressed: a real bomb would inflate to width*height bytes.
    idat = zlib.compress(b"\x00" * (width + 1), 9)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")
    )


def png_bomb(side: int = 2000) -> bytes:
    """A small PNG that really inflates to side*side*4 bytes (within the side limit or not)."""
    rows = b"".join(b"\x00" + b"\x00" * (side * 4) for _ in range(side))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 6, 0, 0, 0)  # RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(rows, 9))
        + _chunk(b"IEND", b"")
    )


def truncated(data: bytes, keep: float = 0.5) -> bytes:
    return data[: max(1, int(len(data) * keep))]


def corrupt_png() -> bytes:
    """Valid signature and header, garbage where the pixel data should be."""
    data = bytearray(drawing_png(1))
    for i in range(60, min(len(data) - 20, 400)):
        data[i] ^= 0x5A
    return bytes(data)


def noise_png(side: int) -> bytes:
    """Incompressible pixels: the PNG is about side*side*3 bytes."""
    import os

    img = Image.frombytes("RGB", (side, side), os.urandom(side * side * 3))
    return png_bytes(img, compress_level=0)
