"""gradcam: the Grad-CAM family for PyTorch, TensorFlow/Keras and JAX, with the math in plain NumPy.

    import gradcam
    cam = gradcam.GradCAM(model, layer="layer4")   # the backend follows the model's framework
    ex = cam(x)                                      # x: a framework tensor or a NumPy batch
    ex.maps, ex.raw, ex.weights, ex.targets, ex.scores, ex.overlay(images)

Importing this package imports no framework: a backend is loaded when a model of its framework arrives.
"""
from gradcam import reference
from gradcam.api import activations_and_gradients, explain, method_class
from gradcam.backends.common import vit_reshape
from gradcam.backends.probe import Probe
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
    FEM,
    ISCAM,
    KPCACAM,
    METHODS,
    SSCAM,
    AblationCAM,
    AugmentSmooth,
    Deconvnet,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    GuidedBackprop,
    GuidedGradCAM,
    HiResCAM,
    LayerCAM,
    Method,
    Occlusion,
    Saliency,
    ScoreCAM,
    SmoothGrad,
    SmoothGradCAMPlusPlus,
    XGradCAM,
)
from gradcam.targets import BoxScore, ClassScore, EmbeddingSimilarity, Neuron, SegmentationRegion

__version__ = "0.1.0"

__all__ = [
    "AblationCAM",
    "AugmentSmooth",
    "BoxScore",
    "CAM",
    "ChannelRanking",
    "ClassScore",
    "Comparison",
    "Deconvnet",
    "DegenerateMapWarning",
    "EigenCAM",
    "EigenGradCAM",
    "EmbeddingSimilarity",
    "Explanation",
    "FEM",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "GradcamWarning",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "ISCAM",
    "KPCACAM",
    "LayerCAM",
    "METHODS",
    "Method",
    "Neuron",
    "NoReluWarning",
    "Occlusion",
    "ProbabilityWarning",
    "Probe",
    "SSCAM",
    "Saliency",
    "ScoreCAM",
    "SegmentationRegion",
    "SmoothGrad",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
    "activations_and_gradients",
    "compare",
    "explain",
    "method_class",
    "reference",
    "vit_reshape",
]
