"""Boxes from a similarity map: threshold relative to the map's range, then 4-connected components."""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Box:
    """A region of a map in the coordinates of the map's own pixels (``x1``/``y1`` exclusive)."""

    x0: float
    y0: float
    x1: float
    y1: float
    score: float  # the map's maximum inside the component
    area: int  # cells in the component

    def scaled(self, sx: float, sy: float, dx: float = 0.0, dy: float = 0.0) -> Box:
        """The same box in other coordinates: ``x * sx + dx``, ``y * sy + dy``."""
        return Box(self.x0 * sx + dx, self.y0 * sy + dy, self.x1 * sx + dx, self.y1 * sy + dy, self.score, self.area)

    def to_dict(self) -> dict[str, float]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in asdict(self).items()}


def components(mask: np.ndarray) -> list[list[tuple[int, int]]]:
    """4-connected components of a boolean ``[H, W]`` mask, each a list of ``(row, col)``, in scan order."""
    seen = np.zeros_like(mask, dtype=bool)
    out: list[list[tuple[int, int]]] = []
    rows, cols = mask.shape
    for r0, c0 in zip(*np.nonzero(mask)):
        if seen[r0, c0]:
            continue
        seen[r0, c0] = True
        queue, cells = deque([(int(r0), int(c0))]), []
        while queue:
            r, c = queue.popleft()
            cells.append((r, c))
            for rr, cc in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                if 0 <= rr < rows and 0 <= cc < cols and mask[rr, cc] and not seen[rr, cc]:
                    seen[rr, cc] = True
                    queue.append((rr, cc))
        out.append(cells)
    return out


def boxes_from_map(heat: np.ndarray, threshold: float = 0.6, max_boxes: int = 5) -> list[Box]:
    """Boxes around the cells of ``heat`` ``[H, W]`` at or above ``min + threshold * (max - min)``.

    Components are ranked by their peak value; at most ``max_boxes`` are returned. A flat map gives no box.
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold {threshold} must be in [0, 1] (a fraction of the map's range)")
    heat = np.asarray(heat, dtype=np.float64)
    lo, hi = float(heat.min()), float(heat.max())
    if not hi > lo:
        return []
    boxes = []
    for cells in components(heat >= lo + threshold * (hi - lo)):
        rs = [r for r, _ in cells]
        cs = [c for _, c in cells]
        peak = max(float(heat[r, c]) for r, c in cells)
        boxes.append(Box(float(min(cs)), float(min(rs)), float(max(cs) + 1), float(max(rs) + 1), peak, len(cells)))
    boxes.sort(key=lambda b: -b.score)
    return boxes[:max_boxes]
