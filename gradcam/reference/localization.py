"""Weakly supervised localisation from a heat map (Grad-CAM paper, sections 4.1 and 4.3).

Boxes are ``(x0, y0, x1, y1)`` in pixels, end exclusive: columns ``x0 <= x < x1``, rows ``y0 <= y < y1``.
A map over another grid has the box of the same form, its axes listed from the last one: ``(x0, x1)`` for a
signal ``(L,)``, ``(x0, y0, z0, x1, y1, z1)`` for a volume ``(d, h, w)``, ``z`` counting slices or frames.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

Box = tuple[int, ...]


def _check_map(heatmap: np.ndarray) -> np.ndarray:
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if not 1 <= heatmap.ndim <= 3:
        raise ValueError(
            f"map must have shape (H, W) (or (L,), (D, H, W)), got {heatmap.ndim}-D shape {heatmap.shape}"
        )
    return heatmap


def _check_box(box: Box, axes: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The box's starts and ends, each listed from the last axis (``x, y, z``)."""
    if len(box) not in (2, 4, 6) or (axes is not None and len(box) != 2 * axes):
        expected = "(x0, y0, x1, y1)" if axes in (None, 2) else f"{2 * axes} numbers, starts then ends"
        raise ValueError(f"a box is {expected}, got {box!r}")
    values = tuple(int(v) for v in box)
    starts, ends = values[: len(values) // 2], values[len(values) // 2 :]
    if any(end < start for start, end in zip(starts, ends, strict=True)):
        raise ValueError(f"a box needs each start <= its end (x0 <= x1, y0 <= y1, ...), got {box!r}")
    return starts, ends


def bounding_box(heatmap: np.ndarray, threshold: float = 0.15) -> Box:
    """The box around the largest connected segment of pixels ``>= threshold * max(map)``.

    The Grad-CAM paper's localisation (section 4.1) with its 15% threshold. Segments are 8-connected (pixels
    touching at a corner belong to one; in a volume, 26-connected); of equal-sized segments the first in
    row-major order wins.
    """
    heatmap = _check_map(heatmap)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    touching = ndimage.generate_binary_structure(heatmap.ndim, heatmap.ndim)
    labels, count = ndimage.label(heatmap >= threshold * heatmap.max(), structure=touching)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    sizes[0] = 0
    where = np.nonzero(labels == np.argmax(sizes))
    starts = [int(index.min()) for index in reversed(where)]
    ends = [int(index.max()) + 1 for index in reversed(where)]
    return (*starts, *ends)


def pointing_game_hit(heatmap: np.ndarray, box: Box, tolerance: int = 0) -> bool:
    """Pointing game (Zhang et al., 2016; Grad-CAM paper section 4.3): is the map's maximum in the box?

    The maximum is the first one in row-major order; ``tolerance`` widens the box by that many pixels
    on each side (Zhang et al. use 15 pixels).
    """
    heatmap = _check_map(heatmap)
    starts, ends = _check_box(box, heatmap.ndim)
    peak = reversed(np.unravel_index(np.argmax(heatmap), heatmap.shape))
    return all(
        start - tolerance <= int(at) < end + tolerance for at, start, end in zip(peak, starts, ends, strict=True)
    )


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two end-exclusive boxes (areas; volumes for 3-D boxes); 0 when both are
    empty."""
    a_starts, a_ends = _check_box(a)
    b_starts, b_ends = _check_box(b)
    if len(a_starts) != len(b_starts):
        raise ValueError(f"boxes of different grids: {a!r} and {b!r}")
    inter = float(np.prod([max(0, min(ae, be) - max(as_, bs))
                           for as_, ae, bs, be in zip(a_starts, a_ends, b_starts, b_ends, strict=True)]))
    size_a = float(np.prod([e - s for s, e in zip(a_starts, a_ends, strict=True)]))
    size_b = float(np.prod([e - s for s, e in zip(b_starts, b_ends, strict=True)]))
    union = size_a + size_b - inter
    return inter / union if union > 0 else 0.0
