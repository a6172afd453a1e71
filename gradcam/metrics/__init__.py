"""How good is an explanation? The measurements of the Grad-CAM family's papers, one value per image.

Against ground truth (no model call): ``localization_iou`` / ``localization_correct`` and ``pointing_game``
(Grad-CAM), ``energy_pointing_game`` (Score-CAM; Grad-CAM++'s ``Loc`` with a threshold),
``instance_coverage`` (several instances), ``rank_correlation`` with the occlusion map (Grad-CAM's
faithfulness).

Through the model (any framework, via its backend's ``predict``, in batches): ``average_drop`` and
``increase_in_confidence`` (Grad-CAM++), ``deletion_auc`` and ``insertion_auc`` with their curves (RISE).
These take ``(model, images, maps, target=None, ..., batch_size=None)``, images in the model's own layout.
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

__all__ = [
    "average_drop",
    "deletion_auc",
    "deletion_curve",
    "energy_pointing_game",
    "explanation_scores",
    "increase_in_confidence",
    "insertion_auc",
    "insertion_curve",
    "instance_coverage",
    "localization_correct",
    "localization_iou",
    "pointing_game",
    "rank_correlation",
    "trapezoid_area",
]
