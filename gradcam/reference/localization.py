"""Weakly supervised localisation from a heat map (Grad-CAM paper, sections 4.1 and 4.3).

Boxes are ``(x0, y0, x1, y1)`` in pixels, end exclusive: columns ``x0 <= x < x1``, rows ``y0 <= y < y1``.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

# 8-connectivity: pixels touching at a corner belong to one segment.
_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def _check_map(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim != 2:
        raise ValueError(f"map must have shape (H, W), got {heatmap.ndim}-D shape {heatmap.shape}")
    return heatmap


def _check_box(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    if len(box) != 4:
        raise ValueError(f"a box is (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = (int(v) for v in box)
    if x1 < x0 or y1 < y0:
        raise ValueError(f"a box needs x0 <= x1 and y0 <= y1, got {box!r}")
    return x0, y0, x1, y1


def bounding_box(heatmap: np.ndarray, threshold: float = 0.15) -> tuple[int, int, int, int]:
    """The box around the largest connected segment of pixels ``>= threshold * max(map)``.

    The Grad-CAM paper's localisation (section 4.1) with its 15% threshold. Segments are 8-connected;
    of equal-sized segments the first in row-major order wins.
    """
    heatmap = _check_map(heatmap)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    labels, count = ndimage.label(heatmap >= threshold * heatmap.max(), structure=_EIGHT_NEIGHBOURS)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    rows, cols = np.nonzero(labels == np.argmax(sizes))
    return int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1


def pointing_game_hit(heatmap: np.ndarray, box: tuple[int, int, int, int], tolerance: int = 0) -> bool:
    """Pointing game (Zhang et al., 2016; Grad-CAM paper section 4.3): is the map's maximum in the box?

    The maximum is the first one in row-major order; ``tolerance`` widens the box by that many pixels
    on each side (Zhang et al. use 15 pixels).
    """
    heatmap = _check_map(heatmap)
    x0, y0, x1, y1 = _check_box(box)
    y, x = np.unravel_index(np.argmax(heatmap), heatmap.shape)
    return bool(x0 - tolerance <= x < x1 + tolerance and y0 - tolerance <= y < y1 + tolerance)


def box_iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over union of two end-exclusive boxes; 0 when both are empty."""
    ax0, ay0, ax1, ay1 = _check_box(a)
    bx0, by0, bx1, by1 = _check_box(b)
    inter = max(0, min(ax1, bx1) - max(ax0, bx0)) * max(0, min(ay1, by1) - max(ay0, by0))
    union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - inter
    return inter / union if union > 0 else 0.0
