"""Input checks the metrics share: maps over a grid of 1 to 3 axes, ground-truth boxes, and how many positions
a step removes.

A grid is a signal ``(L,)``, an image ``(H, W)`` or a volume ``(D, H, W)``. Boxes list their axes from the
last one, as ``gradcam.reference.localization`` does: ``(x0, x1)`` on a signal, ``(x0, y0, x1, y1)`` on an
image, ``(x0, y0, z0, x1, y1, z1)`` on a volume, end exclusive.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

# one image's boxes: a (2 * axes,) box or a (k, 2 * axes) array of boxes, starts then ends, from the last axis
Boxes = np.ndarray | Sequence[Any]

_BOX_FORMS = {1: "(x0, x1)", 2: "(x0, y0, x1, y1)", 3: "(x0, y0, z0, x1, y1, z1)"}
# per number of grid axes: what the inputs are called, their grid's axes, the maps' shape
_GRIDS = {
    1: ("signals", "(L,)", "(N, L)"),
    2: ("images", "(H, W)", "(N, H, W)"),
    3: ("volumes", "(D, H, W)", "(N, D, H, W)"),
}


def as_maps(maps: Any, size: tuple[int, ...] | None = None) -> np.ndarray:
    """``maps`` as float64 ``(N, *grid)`` with 1 to 3 grid axes, finite; with ``size``, ``grid`` must equal it."""
    maps = np.asarray(maps, dtype=np.float64)
    if not 2 <= maps.ndim <= 4:
        raise ValueError(
            f"maps must have shape (N, H, W) (or (N, L), (N, D, H, W)), got {maps.ndim}-D shape {maps.shape}"
        )
    if size is not None and maps.shape[1:] != tuple(size):
        inputs, axes, _ = _GRIDS[len(size)]
        raise ValueError(f"maps of shape {maps.shape} do not fit {inputs} of size {axes} = {tuple(size)}")
    if not np.isfinite(maps).all():
        raise ValueError("the maps contain NaN or Inf values")
    return maps


def boxes_per_image(boxes: Boxes, n: int, size: tuple[int, ...]) -> list[np.ndarray]:
    """One ``(k, 2 * axes)`` int array per image, ``k >= 1``, each box non-empty and inside the grid ``size``.

    ``boxes`` is one entry per image (one box or a ``(k, 2 * axes)`` array), or an ``(N, 2 * axes)`` array.
    """
    if len(boxes) != n:
        raise ValueError(f"got boxes for {len(boxes)} images and maps for {n}; give one box or boxes per image")
    axes = len(size)
    form = _BOX_FORMS[axes]
    inputs, _, _ = _GRIDS[axes]
    extent = np.array(size[::-1])
    result = []
    for i, image_boxes in enumerate(boxes):
        array = np.asarray(image_boxes, dtype=np.int64)
        if array.size == 0:
            raise ValueError(f"image {i} has no box")
        if array.shape[-1] != 2 * axes or array.ndim > 2:
            raise ValueError(_box_shape_message(array.shape, i, size))
        array = array.reshape(-1, 2 * axes)
        starts, ends = array[:, :axes], array[:, axes:]
        empty = (ends <= starts).any(axis=1)
        if empty.any():
            raise ValueError(f"box {array[empty][0].tolist()} of image {i} is empty: {form} needs each start < its end")
        outside = ((starts < 0) | (ends > extent)).any(axis=1)
        if outside.any():
            where = "x".join(str(length) for length in size)
            raise ValueError(f"box {array[outside][0].tolist()} of image {i} lies outside the {where} {inputs[:-1]}")
        result.append(array)
    return result


def _box_shape_message(shape: tuple[int, ...], i: int, size: tuple[int, ...]) -> str:
    """Boxes whose length fits another grid say which maps they would fit: the maps are likely what is wrong."""
    numbers = shape[-1] if shape else 0
    if numbers // 2 in _GRIDS and numbers % 2 == 0 and len(shape) <= 2:
        maps = _GRIDS[numbers // 2][2]
        return (
            f"maps must have shape {maps} to take {_BOX_FORMS[numbers // 2]} boxes, got maps over a grid "
            f"{tuple(size)} (boxes {_BOX_FORMS[len(size)]})"
        )
    return f"the boxes of image {i} are not {_BOX_FORMS[len(size)]} rows: shape {shape}"


def box_region(box: np.ndarray) -> tuple[slice, ...]:
    """The index of a box's positions in the grid: its ``(start, end)`` pairs, reversed to the array's axis order."""
    axes = len(box) // 2
    return tuple(slice(int(box[a]), int(box[axes + a])) for a in reversed(range(axes)))


def union_mask(boxes: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Bool array of shape ``size``: the positions inside any of the ``(k, 2 * axes)`` boxes."""
    mask = np.zeros(size, dtype=bool)
    for box in boxes:
        mask[box_region(box)] = True
    return mask


def grid_axes(maps: np.ndarray) -> tuple[int, ...]:
    """The grid axes of ``(N, *grid)`` maps: every axis but the first."""
    return tuple(range(1, maps.ndim))


def positive_steps(steps: int) -> int:
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return int(steps)
