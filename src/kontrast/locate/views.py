"""Ready-made "where" pictures for reports: overlays as data URIs, and a grid composite with known boxes.

``kontrast demo`` uses these: each search hit gets the map of its query (shown on request), and a composite of
four sample pictures shows the map of each one's label with a hit/miss mark (is the map's peak inside the
picture's own cell?).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from .core import locate
from .render import overlay_for


def png_data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def overlay_uris(model: torch.nn.Module, tokenizer: Callable, images: Sequence[Image.Image], text: str,
                 max_side: int = 128) -> list[str]:
    """The map of one ``text`` over each image, as PNG data URIs (input at twice the model's image size)."""
    loc = locate(model, list(images), [text], size=2 * model.image_size, tokenizer=tokenizer)
    return [png_data_uri(overlay_for(img, loc.heat(i, 0), loc.regions[i], max_side=max_side))
            for i, img in enumerate(images)]


@dataclass
class CompositeView:
    """A grid of pictures on white and, per picture, the map of its text and whether the peak hit its cell."""

    canvas_uri: str
    texts: list[str]
    overlays: list[str]
    hits: list[bool]


def grid_composite(images: Sequence[Image.Image], cell: int, cols: int = 2) -> tuple[Image.Image, list[tuple]]:
    """Pictures fitted into ``cell``-pixel cells of a grid on white: ``(canvas, boxes (x0, y0, x1, y1))``."""
    rows = -(-len(images) // cols)
    canvas = Image.new("RGB", (cols * cell, rows * cell), (255, 255, 255))
    boxes = []
    for i, img in enumerate(images):
        x, y = (i % cols) * cell, (i // cols) * cell
        pic = img.convert("RGB")
        pic.thumbnail((cell, cell), Image.BICUBIC)
        canvas.paste(pic, (x + (cell - pic.width) // 2, y + (cell - pic.height) // 2))
        boxes.append((x, y, x + cell, y + cell))
    return canvas, boxes


def composite_view(model: torch.nn.Module, tokenizer: Callable, images: Sequence[Image.Image], texts: Sequence[str],
                   cell: int = 96) -> CompositeView:
    """One grid of ``images``; the map of ``texts[i]`` over the whole grid, and whether its peak lies in cell i."""
    canvas, boxes = grid_composite(images, cell)
    loc = locate(model, [canvas], list(texts), size=3 * model.image_size, tokenizer=tokenizer)
    overlays, hits = [], []
    for t, (x0, y0, x1, y1) in enumerate(boxes):
        px, py = loc.peak_in_source(0, t)
        hits.append(bool(x0 <= px < x1 and y0 <= py < y1))
        overlays.append(png_data_uri(overlay_for(canvas, loc.heat(0, t), loc.regions[0], max_side=2 * cell)))
    return CompositeView(png_data_uri(canvas), list(texts), overlays, hits)
