"""One class per method; all share the bases in ``gradcam.methods.base``."""
from gradcam.methods.augment import AugmentSmooth
from gradcam.methods.base import ChannelWeightMethod, LayerMethod, Method
from gradcam.methods.cam import CAM
from gradcam.methods.family import FEM, KPCACAM, EigenGradCAM, FinerCAM
from gradcam.methods.fullgrad import FullGrad
from gradcam.methods.gradient import EigenCAM, GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM
from gradcam.methods.guided import Deconvnet, GuidedBackprop, GuidedGradCAM
from gradcam.methods.perturbation import AblationCAM, Occlusion, ScoreCAM
from gradcam.methods.saliency import Saliency, SmoothGrad
from gradcam.methods.score_variants import ISCAM, SSCAM
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
        EigenGradCAM,
        KPCACAM,
        FEM,
        FinerCAM,
        Saliency,
        SmoothGrad,
        SSCAM,
        ISCAM,
        FullGrad,
    )
}

__all__ = [
    "AblationCAM",
    "AugmentSmooth",
    "CAM",
    "ChannelWeightMethod",
    "Deconvnet",
    "EigenCAM",
    "EigenGradCAM",
    "FEM",
    "FinerCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "GuidedBackprop",
    "GuidedGradCAM",
    "HiResCAM",
    "ISCAM",
    "KPCACAM",
    "LayerCAM",
    "LayerMethod",
    "METHODS",
    "Method",
    "Occlusion",
    "SSCAM",
    "Saliency",
    "ScoreCAM",
    "SmoothGrad",
    "SmoothGradCAMPlusPlus",
    "XGradCAM",
]
