"""Heatmap overlays as pictures: a perceptually ordered colour map blended over the image, boxes on top."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .boxes import Box

# Anchor colours of a blue -> cyan -> yellow -> red ramp (low -> high similarity), linearly interpolated.
_RAMP = np.array([[48, 18, 59], [40, 120, 230], [30, 200, 200], [120, 240, 80], [250, 200, 40], [220, 50, 20],
                  [122, 4, 3]], dtype=np.float64)


def colorize(heat: np.ndarray) -> np.ndarray:
    """``[H, W]`` values in [0, 1] -> ``[H, W, 3]`` uint8 colours."""
    t = np.clip(np.asarray(heat, dtype=np.float64), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(t).astype(int).clip(0, len(_RAMP) - 2)
    frac = (t - lo)[..., None]
    return (_RAMP[lo] * (1 - frac) + _RAMP[lo + 1] * frac).round().astype(np.uint8)


def normalise(heat: np.ndarray) -> np.ndarray:
    """Min-max scale to [0, 1] (a flat map becomes zeros)."""
    heat = np.asarray(heat, dtype=np.float64)
    lo, hi = float(np.nanmin(heat)), float(np.nanmax(heat))
    return np.zeros_like(heat) if not hi > lo else (heat - lo) / (hi - lo)


def overlay(image: Image.Image, heat: np.ndarray, region: tuple[float, float, float, float] | None = None,
            alpha: float = 0.55, boxes: list[Box] | None = None, label: str | None = None) -> Image.Image:
    """``image`` with ``heat`` (any size, values in [0, 1]) stretched over ``region`` (x0, y0, x1, y1 in image
    pixels; default the whole image) and blended with ``alpha``; outside the region the image is dimmed (the model
    did not see it). ``boxes`` are drawn in image pixels."""
    base = image.convert("RGB")
    w, h = base.size
    x0, y0, x1, y1 = region or (0.0, 0.0, float(w), float(h))
    rw, rh = max(1, round(x1 - x0)), max(1, round(y1 - y0))
    heat_img = Image.fromarray((np.clip(heat, 0, 1) * 255).astype(np.uint8)).resize((rw, rh), Image.BILINEAR)
    full = np.zeros((h, w), dtype=np.float64)
    seen = np.zeros((h, w), dtype=bool)
    ox, oy = round(x0), round(y0)
    # paste the resized map into image coordinates, clipped to the image (a letterboxed input reaches outside it)
    sx0, sy0, sx1, sy1 = max(0, -ox), max(0, -oy), min(rw, w - ox), min(rh, h - oy)
    if sx1 > sx0 and sy1 > sy0:
        full[oy + sy0:oy + sy1, ox + sx0:ox + sx1] = np.asarray(heat_img, dtype=np.float64)[sy0:sy1, sx0:sx1] / 255.0
        seen[oy + sy0:oy + sy1, ox + sx0:ox + sx1] = True
    pixels = np.asarray(base, dtype=np.float64)
    colours = colorize(full).astype(np.float64)
    blended = np.where(seen[..., None], pixels * (1 - alpha) + colours * alpha, pixels * 0.35)
    out = Image.fromarray(blended.round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(out)
    for box in boxes or []:
        draw.rectangle([box.x0, box.y0, box.x1 - 1, box.y1 - 1], outline=(255, 255, 255), width=max(1, w // 160))
    if label:
        draw.rectangle([0, 0, min(w, 8 + 7 * len(label)), 16], fill=(0, 0, 0))
        draw.text((4, 2), label, fill=(255, 255, 255))
    return out


def overlay_for(image: Image.Image, heat: np.ndarray, region: tuple[float, float, float, float], max_side: int = 512,
                label: str | None = None, boxes: list[Box] | None = None) -> Image.Image:
    """``overlay`` on a copy of ``image`` shrunk to at most ``max_side`` pixels (region and boxes scaled with it):
    a picture for a page, not the full-resolution original."""
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.convert("RGB").resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                            Image.BICUBIC)
        region = (region[0] * scale, region[1] * scale, region[2] * scale, region[3] * scale)
        boxes = [b.scaled(scale, scale) for b in boxes or []]
    return overlay(image, normalise(heat), region, boxes=boxes, label=label)
