"""Input checks the metrics share: maps, ground-truth boxes, and how many pixels a step removes."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# one image's boxes: a (4,) box or a (k, 4) array of boxes (x0, y0, x1, y1), end exclusive
Boxes = np.ndarray | Sequence[Any]


def as_maps(maps: Any, size: tuple[int, int] | None = None) -> np.ndarray:
    """``maps`` as float64 ``(N, H, W)``, finite; with ``size``, ``(H, W)`` must equal it."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {maps.ndim}-D shape {maps.shape}")
    if size is not None and maps.shape[1:] != tuple(size):
        raise ValueError(f"maps of shape {maps.shape} do not fit images of size (H, W) = {tuple(size)}")
    if not np.isfinite(maps).all():
        raise ValueError("the maps contain NaN or Inf values")
    return maps


def boxes_per_image(boxes: Boxes, n: int, size: tuple[int, int]) -> list[np.ndarray]:
    """One ``(k, 4)`` int array per image, ``k >= 1``, each box non-empty and inside the ``(H, W)`` image.

    ``boxes`` is one entry per image (a ``(4,)`` box or a ``(k, 4)`` array), or an ``(N, 4)`` array.
    """
    if len(boxes) != n:
        raise ValueError(f"got boxes for {len(boxes)} images and maps for {n}; give one box or (k, 4) array per image")
    H, W = size
    result = []
    for i, image_boxes in enumerate(boxes):
        array = np.asarray(image_boxes, dtype=np.int64)
        if array.size == 0:
            raise ValueError(f"image {i} has no box")
        if array.shape[-1] != 4 or array.ndim > 2:
            raise ValueError(f"the boxes of image {i} are not (x0, y0, x1, y1) rows: shape {array.shape}")
        array = array.reshape(-1, 4)
        x0, y0, x1, y1 = array.T
        empty = (x1 <= x0) | (y1 <= y0)
        if empty.any():
            raise ValueError(f"box {array[empty][0].tolist()} of image {i} is empty: a box needs x0 < x1 and y0 < y1")
        outside = (x0 < 0) | (y0 < 0) | (x1 > W) | (y1 > H)
        if outside.any():
            raise ValueError(f"box {array[outside][0].tolist()} of image {i} lies outside the {H}x{W} image")
        result.append(array)
    return result


def union_mask(boxes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: the pixels inside any of the ``(k, 4)`` boxes."""
    mask = np.zeros(size, dtype=bool)
    for x0, y0, x1, y1 in boxes:
        mask[y0:y1, x0:x1] = True
    return mask


def positive_steps(steps: int) -> int:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)
