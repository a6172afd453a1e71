"""Metrics that compare heat maps with ground truth or with another map; no model is called.

Maps are ``(N, H, W)`` (any non-negative scale; the methods' maps in [0, 1]); boxes are ``(x0, y0, x1, y1)``
in pixels, end exclusive, one box or a ``(k, 4)`` array of boxes per image. Signals ``(N, L)`` take boxes
``(x0, x1)`` and volumes ``(N, D, H, W)`` boxes ``(x0, y0, z0, x1, y1, z1)`` (axes listed from the last one, as in
``gradcam.reference.localization``); a pixel is then a position of the grid. Every function returns one value
per image, as an array.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from gradcam import reference as ref
from gradcam.metrics.checks import Boxes, as_maps, box_region, boxes_per_image, union_mask

LOCALIZATION_THRESHOLD = 0.15
CORRECT_IOU = 0.5


def localization_iou(maps: Any, boxes: Boxes, threshold: float = LOCALIZATION_THRESHOLD) -> np.ndarray:
    """Weakly supervised localization (Grad-CAM paper, section 4.1): the box around the largest connected
    segment of the map's pixels ``>= threshold * max`` (15% in the paper), and its intersection over union
    with the ground truth. With several ground-truth boxes, the best IoU. ``(N,)`` float in [0, 1].

    A localization counts as correct when the IoU is at least 0.5 (``localization_correct``).
    """
    maps = as_maps(maps)
    per_image = boxes_per_image(boxes, len(maps), maps.shape[1:])
    ious = np.zeros(len(maps))
    for i, (heatmap, truth) in enumerate(zip(maps, per_image, strict=False)):
        found = ref.bounding_box(heatmap, threshold)
        ious[i] = max(ref.box_iou(found, tuple(box)) for box in truth)
    return ious


def localization_correct(maps: Any, boxes: Boxes, threshold: float = LOCALIZATION_THRESHOLD) -> np.ndarray:
    """``(N,)`` bool: ``localization_iou >= 0.5``, the paper's criterion for a correct localization."""
    return localization_iou(maps, boxes, threshold) >= CORRECT_IOU


def pointing_game(maps: Any, boxes: Boxes, tolerance: int = 0) -> np.ndarray:
    """Pointing game (Zhang et al., ECCV 2016; Grad-CAM paper section 4.3): a hit when the map's maximum (the
    first in row-major order) lies in a ground-truth box, widened by ``tolerance`` pixels. ``(N,)`` bool."""
    maps = as_maps(maps)
    per_image = boxes_per_image(boxes, len(maps), maps.shape[1:])
    return np.array(
        [
            any(ref.pointing_game_hit(heatmap, tuple(box), tolerance) for box in truth)
            for heatmap, truth in zip(maps, per_image, strict=False)
        ],
        dtype=bool,
    )


def energy_pointing_game(maps: Any, boxes: Boxes, threshold: float = 0.0) -> np.ndarray:
    """Energy-based pointing game (Wang et al., Score-CAM, 2020): the share of the map's sum that lies inside
    the ground-truth boxes (their union, so overlaps count once):

    ``E = sum_{p in boxes} L_p / sum_p L_p`` over the grid's positions ``p`` (pixels ``ij`` of an image),
    ``(N,)`` float in [0, 1]; 0 for an all-zero map.

    With ``threshold = d``, values below ``d * max(L)`` count as 0 first: the Grad-CAM++ paper's localization
    measure ``Loc(d)`` on maps thresholded at ``d``, which with several instances measures how much of the map
    covers them all.
    Maps must be non-negative.
    """
    maps = as_maps(maps)
    if (maps < 0).any():
        raise ValueError("energy needs non-negative maps; pass the methods' maps (in [0, 1]), not signed ones")
    per_image = boxes_per_image(boxes, len(maps), maps.shape[1:])
    shares = np.zeros(len(maps))
    for i, (heatmap, truth) in enumerate(zip(maps, per_image, strict=False)):
        kept = np.where(heatmap >= threshold * heatmap.max(), heatmap, 0.0)
        total = kept.sum()
        if total > 0:
            shares[i] = kept[union_mask(truth, heatmap.shape)].sum() / total
    return shares


def instance_coverage(maps: Any, boxes: Boxes, threshold: float = 0.5) -> np.ndarray:
    """The share of an image's ground-truth boxes in which the map reaches ``threshold`` times its maximum
    somewhere: with several instances, how many of them the map lights up. ``(N,)`` float in [0, 1];
    0 for an all-zero map. (Our measure for the Grad-CAM++ claim of covering several instances.)"""
    maps = as_maps(maps)
    per_image = boxes_per_image(boxes, len(maps), maps.shape[1:])
    coverage = np.zeros(len(maps))
    for i, (heatmap, truth) in enumerate(zip(maps, per_image, strict=False)):
        peak = heatmap.max()
        if peak > 0:
            lit = [heatmap[box_region(box)].max() >= threshold * peak for box in truth]
            coverage[i] = np.mean(lit)
    return coverage


def rank_correlation(maps: Any, reference_maps: Any) -> np.ndarray:
    """Spearman rank correlation, per image, of a map with a reference map over all pixels: the Grad-CAM
    paper's faithfulness (section 5.3), with the occlusion map as the reference. ``(N,)`` in
    [-1, 1]; 0 where either map is constant (it ranks nothing)."""
    maps = as_maps(maps)
    reference_maps = as_maps(reference_maps, maps.shape[1:])
    if len(reference_maps) != len(maps):
        raise ValueError(f"got {len(maps)} maps and {len(reference_maps)} reference maps")
    rho = np.zeros(len(maps))
    for i, (a, b) in enumerate(zip(maps, reference_maps, strict=False)):
        if np.ptp(a) > 0 and np.ptp(b) > 0:
            rho[i] = stats.spearmanr(a.ravel(), b.ravel()).statistic
    return rho
