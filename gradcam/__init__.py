"""gradcam: the Grad-CAM family for PyTorch, TensorFlow/Keras and JAX, with the math in plain NumPy.

    import gradcam
    cam = gradcam.GradCAM(model, layer="layer4")   # the backend follows the model's framework
    ex = cam(x)                                      # x: a framework tensor or a NumPy batch
    ex.maps, ex.raw, ex.weights, ex.targets, ex.scores, ex.overlay(images)

Importing this package imports no framework: a backend is loaded when a model of its framework arrives.
"""
from gradcam import reference
from gradcam.api import explain, method_class
from gradcam.backends.common import vit_reshape
from gradcam.compare import Comparison, compare
from gradcam.explanation import (
    ChannelRanking,
    DegenerateMapWarning,
    Explanation,
    GradcamWarning,
    NoReluWarning,
    ProbabilityWarning,
)
from gradcam.methods import (
    CAM,
    METHODS,
    AblationCAM,
    Deconvnet,
    EigenCAM,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    Method,
    Occlusion,
    ScoreCAM,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)

__version__ = "0.1.0"

__all__ = [
    "AblationCAM",
    "CAM",
    "ChannelRanking",
    "Comparison",
    "Deconvnet",
    "DegenerateMapWarning",
    "EigenCAM",
    "Explanation",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradcamWarning",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "METHODS",
    "Method",
    "NoReluWarning",
    "Occlusion",
    "ProbabilityWarning",
    "ScoreCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "compare",
    "explain",
    "method_class",
    "reference",
    "vit_reshape",
]
