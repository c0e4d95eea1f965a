"""Preflight's page icon, drawn here so that the dashboard makes no outside request.

A Material or emoji `page_icon` makes the browser fetch a font or an image from a CDN,
which fails offline and tells a third party that the dashboard is open. A small image
built in memory is served by the Streamlit server itself.
"""

from __future__ import annotations

from functools import cache

from PIL import Image, ImageDraw

SIZE = 64
BLUE, WHITE = (27, 94, 168, 255), (255, 255, 255, 255)


@cache
def page_icon() -> Image.Image:
    """A blue rounded square with a white wedge climbing to the upper right: a take-off."""
    image = Image.new("RGBA", (SIZE, SIZE), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    draw.rounded_rectangle((0, 0, SIZE - 1, SIZE - 1), radius=14, fill=BLUE)
    draw.polygon([(12, 46), (52, 14), (40, 50), (30, 40)], fill=WHITE)
    draw.line([(12, 54), (52, 54)], fill=WHITE, width=4)
    return image
