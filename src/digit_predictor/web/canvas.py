"""The drawing canvas (streamlit-drawable-canvas), reduced to what the Draw page needs."""

from __future__ import annotations

from dataclasses import dataclass

SIZE = 280
STROKE_WIDTH = 20
INK = "#FFFFFF"
PAPER = "#000000"


@dataclass(frozen=True)
class Drawing:
    png: bytes | None  # the canvas as PNG, None before the first stroke reaches the server
    strokes: int


def draw_canvas(key: str) -> Drawing:
    """Show a 280x280 freedraw canvas, white ink on black; return what is drawn on it."""
    # Imported here: the component registers itself with the running Streamlit on import,
    # which fails outside `streamlit run` / AppTest (e.g. when tests import this package).
    from streamlit_drawable_canvas import st_canvas

    result = st_canvas(
        stroke_width=STROKE_WIDTH,
        stroke_color=INK,
        background_color=PAPER,
        height=SIZE,
        width=SIZE,
        drawing_mode="freedraw",
        update_streamlit=True,
        return_image_data=True,
        key=key,
    )
    objects = (result.json_data or {}).get("objects") or []
    return Drawing(png=result.image_bytes, strokes=len(objects))
