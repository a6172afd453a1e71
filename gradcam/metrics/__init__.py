"""How good is an explanation? The measurements of the Grad-CAM family's papers, one value per image.

Against ground truth (no model call): ``localization_iou`` / ``localization_correct`` and ``pointing_game``
(Grad-CAM), ``energy_pointing_game`` (Score-CAM; Grad-CAM++'s ``Loc`` with a threshold),
``instance_coverage`` (several instances), ``rank_correlation`` with the occlusion map (Grad-CAM's
faithfulness);
``mask_iou`` of a thresholded map with the object's mask and ``mask_energy``, the share of the map on it (Grad-CAM
section 4.2, ``gradcam.metrics.segmentation``); the pointing game's precision and recall over top-k predictions
with a rejection threshold (Grad-CAM section 4.3, ``gradcam.metrics.pointing``).

Through the model (any framework, via its backend's ``predict``, in batches): ``average_drop`` and
``increase_in_confidence`` (Grad-CAM++), ``deletion_auc`` and ``insertion_auc`` with their curves (RISE).
These take ``(model, images, maps, target=None, ..., batch_size=None)``, images in the model's own layout.

Every metric takes maps over a grid of 1 to 3 axes: ``(N, H, W)`` for images, ``(N, L)`` for signals,
``(N, D, H, W)`` for volumes (inputs ``(N, C, *grid)`` or channels last); boxes list their axes from the last one,
``(x0, x1)``, ``(x0, y0, x1, y1)``, ``(x0, y0, z0, x1, y1, z1)`` (``gradcam.reference.localization``).
"""
from gradcam.metrics.confidence import average_drop, explanation_scores, increase_in_confidence
from gradcam.metrics.curves import deletion_auc, deletion_curve, insertion_auc, insertion_curve, trapezoid_area
from gradcam.metrics.localization import (
    energy_pointing_game,
    instance_coverage,
    localization_correct,
    localization_iou,
    pointing_game,
    rank_correlation,
)
from gradcam.metrics.pointing import best_rejection_threshold, declared_present, pointing_precision_recall
from gradcam.metrics.segmentation import (
    best_threshold,
    iou_by_threshold,
    mask_energy,
    mask_iou,
    threshold_masks,
)

__all__ = [
    "average_drop",
    "best_rejection_threshold",
    "best_threshold",
    "declared_present",
    "deletion_auc",
    "deletion_curve",
    "energy_pointing_game",
    "explanation_scores",
    "increase_in_confidence",
    "insertion_auc",
    "insertion_curve",
    "iou_by_threshold",
    "instance_coverage",
    "localization_correct",
    "localization_iou",
    "mask_energy",
    "mask_iou",
    "pointing_game",
    "pointing_precision_recall",
    "rank_correlation",
    "threshold_masks",
    "trapezoid_area",
]
