"""Maps against ground-truth object masks: weakly-supervised segmentation (Grad-CAM paper, Selvaraju et al., ICCV
2017, section 4.2: maps as segmentation seeds) and the share of a map's energy on the object.

Maps are ``(N, H, W)`` non-negative (the methods' maps in [0, 1]); masks ``(N, H, W)`` bool, one per image (the
union of its objects). Signals ``(N, L)`` and volumes ``(N, D, H, W)`` work alike, their masks of the maps' shape,
a pixel ``ij`` then any position of the grid. Every function returns one value per image.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam.metrics.checks import as_maps, grid_axes


def threshold_masks(maps: Any, threshold: float) -> np.ndarray:
    """The segment of each map: ``S_ij = [L_ij >= threshold * max(L)]`` with ``0 < threshold <= 1``; an
    all-zero map segments nothing. Bool, the maps' shape."""
    maps = _non_negative(maps)
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must lie in (0, 1], got {threshold}")
    peak = maps.max(axis=grid_axes(maps), keepdims=True)
    return (maps >= threshold * peak) & (peak > 0)


def mask_iou(maps: Any, masks: Any, threshold: float) -> np.ndarray:
    """Intersection over union of each map's segment ``S`` (``threshold_masks``) with the true mask ``M``:

    ``IoU = |S and M| / |S or M|``, ``(N,)`` float in [0, 1]; masks must be non-empty.
    """
    maps = _non_negative(maps)
    truth = _masks(masks, maps.shape)
    segment = threshold_masks(maps, threshold)
    inter = (segment & truth).sum(axis=grid_axes(maps))
    union = (segment | truth).sum(axis=grid_axes(maps))
    return inter / union


def iou_by_threshold(maps: Any, masks: Any, thresholds: Any) -> np.ndarray:
    """``mask_iou`` at each of ``thresholds``: ``(T, N)``."""
    return np.stack([mask_iou(maps, masks, float(t)) for t in np.asarray(thresholds, dtype=np.float64)])


def best_threshold(thresholds: Any, ious: Any) -> float:
    """The threshold of ``thresholds`` ``(T,)`` with the highest mean IoU over images (``ious``: ``(T, N)``, as
    ``iou_by_threshold`` gives on a validation split); the first among ties."""
    thresholds = np.asarray(thresholds, dtype=np.float64)
    ious = np.asarray(ious, dtype=np.float64)
    if ious.ndim != 2 or ious.shape[0] != thresholds.size or ious.shape[1] == 0:
        raise ValueError(f"ious must be (T, N) with T = {thresholds.size} thresholds and N >= 1, got {ious.shape}")
    return float(thresholds[int(np.argmax(ious.mean(axis=1)))])


def mask_energy(maps: Any, masks: Any) -> np.ndarray:
    """The share of the map's sum on the object: ``E = sum_{ij in M} L_ij / sum_ij L_ij``, ``(N,)`` float in
    [0, 1]; 0 for an all-zero map. The mask form of the energy pointing game (Wang et al., Score-CAM, 2020)."""
    maps = _non_negative(maps)
    truth = _masks(masks, maps.shape)
    total = maps.sum(axis=grid_axes(maps))
    inside = np.where(truth, maps, 0.0).sum(axis=grid_axes(maps))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


def _non_negative(maps: Any) -> np.ndarray:
    maps = as_maps(maps)
    if (maps < 0).any():
        raise ValueError("segments and energy need non-negative maps; pass the methods' maps (in [0, 1])")
    return maps


def _masks(masks: Any, shape: tuple[int, ...]) -> np.ndarray:
    masks = np.asarray(masks)
    if masks.shape != shape:
        raise ValueError(f"masks of shape {masks.shape} do not fit maps of shape {shape}")
    if masks.dtype != bool:
        raise ValueError(f"masks must be boolean, got {masks.dtype}")
    found = masks.any(axis=grid_axes(masks))
    if not found.all():
        raise ValueError(f"the mask of image {int(np.argmin(found))} is empty")
    return masks
