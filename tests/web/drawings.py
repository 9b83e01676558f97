"""Canvas-like PNGs for tests: white strokes on black (or on transparent), as the canvas sends."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def canvas_png(
    strokes: list[list[tuple[int, int]]], *, size: int = 280, transparent: bool = False
) -> bytes:
    background = (0, 0, 0, 0) if transparent else (0, 0, 0, 255)
    img = Image.new("RGBA", (size, size), background)
    draw = ImageDraw.Draw(img)
    for stroke in strokes:
        draw.line(stroke, fill=(255, 255, 255, 255), width=20, joint="curve")
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


ONE = [[(140, 40), (140, 240)]]
SEVEN = [[(70, 50), (210, 50)], [(210, 50), (120, 240)], [(110, 140), (190, 140)]]
BLANK: list[list[tuple[int, int]]] = []
