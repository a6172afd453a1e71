"""One class per method; all share the bases in ``gradcam.methods.base``."""
from gradcam.methods.base import ChannelWeightMethod, LayerMethod, Method
from gradcam.methods.cam import CAM
from gradcam.methods.gradient import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from gradcam.methods.guided import Deconvnet, GuidedBackprop, GuidedGradCAM
from gradcam.methods.perturbation import AblationCAM, Occlusion, ScoreCAM
from gradcam.methods.smooth import SmoothGradCAMPlusPlus

METHODS: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (
        GradCAM,
        GradCAMPlusPlus,
        SmoothGradCAMPlusPlus,
        XGradCAM,
        LayerCAM,
        HiResCAM,
        EigenCAM,
        CAM,
        GuidedBackprop,
        Deconvnet,
        GuidedGradCAM,
        ScoreCAM,
        AblationCAM,
        Occlusion,
    )
}

__all__ = [
    "AblationCAM",
    "CAM",
    "ChannelWeightMethod",
    "Deconvnet",
    "EigenCAM",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "LayerCAM",
    "LayerMethod",
    "METHODS",
    "Method",
    "Occlusion",
    "ScoreCAM",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]
