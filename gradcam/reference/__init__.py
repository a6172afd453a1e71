"""The formulas of the Grad-CAM family in plain NumPy, one small function per rule.

Nothing here imports a framework: activations ``A`` and gradients ``G`` arrive as ``(N, K, h, w)``
arrays from any backend (or from a hand-worked example), and every function returns NumPy. The grid may also
have one axis (signals, ``(N, K, L)``) or three (volumes and clips, ``(N, K, d, h, w)``): each rule, the
upsampling (linear, bilinear, trilinear), the normalization and the 15% box are written once for any grid.

These float64 functions are the oracle. The methods run ``gradcam.reference.fast``: the same rules in
float32, written for throughput, tested against these in every backend (``tests/test_fast_path.py``).
"""
from gradcam.reference.cams import (
    GRAD_CAM_PP_VARIANTS,
    cam,
    channel_contributions,
    counterfactual_grad_cam,
    eigen_cam,
    grad_cam,
    grad_cam_pp,
    grad_cam_pp_singular,
    grad_cam_pp_weights,
    grad_cam_weights,
    guided_grad_cam,
    hires_cam,
    layer_cam,
    relu,
    smooth_grad_cam_pp,
    smooth_grad_cam_pp_singular,
    smooth_grad_cam_pp_weights,
    weighted_map,
    xgrad_cam,
    xgrad_cam_weights,
)
from gradcam.reference.colour import COLORMAPS, colormap, gradient_image, overlay
from gradcam.reference.localization import bounding_box, box_iou, pointing_game_hit
from gradcam.reference.postprocess import bilinear_matrix, bilinear_taps, normalize, normalize_signed, upsample
from gradcam.reference.relu_rules import RULES, relu_backward
from gradcam.reference.scores import SCORES, softmax, target_scores

__all__ = [
    "COLORMAPS",
    "RULES",
    "SCORES",
    "bilinear_matrix",
    "bilinear_taps",
    "bounding_box",
    "box_iou",
    "cam",
    "channel_contributions",
    "colormap",
    "counterfactual_grad_cam",
    "eigen_cam",
    "grad_cam",
    "GRAD_CAM_PP_VARIANTS",
    "grad_cam_pp",
    "grad_cam_pp_singular",
    "grad_cam_pp_weights",
    "grad_cam_weights",
    "gradient_image",
    "guided_grad_cam",
    "hires_cam",
    "layer_cam",
    "normalize",
    "normalize_signed",
    "overlay",
    "pointing_game_hit",
    "relu",
    "relu_backward",
    "smooth_grad_cam_pp",
    "smooth_grad_cam_pp_singular",
    "smooth_grad_cam_pp_weights",
    "softmax",
    "target_scores",
    "upsample",
    "weighted_map",
    "xgrad_cam",
    "xgrad_cam_weights",
]
