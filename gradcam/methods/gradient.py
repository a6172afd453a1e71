"""Methods that weigh a layer's activations by the gradients of the target score (one forward, one backward).

They run the float32 forms of the formulas (``gradcam.reference.fast``), tested against the float64 ones.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.backends import Probe
from gradcam.methods.base import ChannelWeightMethod, LayerMethod
from gradcam.reference import fast


class GradCAM(ChannelWeightMethod):
    """Grad-CAM (Selvaraju et al., 2017): ``alpha_k = (1/Z) sum_ij G_kij``, ``L = ReLU(sum_k alpha_k A_k)``.

    With ``counterfactual=True`` the gradients are negated: the map shows the regions whose removal would
    raise the model's confidence in the target (paper section 5.3).
    """

    name = "gradcam"

    def __init__(self, model: Any, layer: Any = None, *, counterfactual: bool = False, **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.counterfactual = counterfactual
        if counterfactual:
            self.name = "counterfactual-gradcam"

    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        alpha = fast.grad_cam_weights(G)
        return -alpha if self.counterfactual else alpha  # the weights of -G, exactly


class GradCAMPlusPlus(ChannelWeightMethod):
    """Grad-CAM++ (Chattopadhyay et al., 2018), the exponential-score closed form of its eq. 19:
    ``a = G^2 / (2 G^2 + S_k G^3)``, ``w_k = sum_ij a ReLU(G)``, ``L = ReLU(sum_k w_k A_k)``."""

    name = "gradcam++"

    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        return fast.grad_cam_pp_weights(A, G)


class XGradCAM(ChannelWeightMethod):
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij``."""

    name = "xgradcam"

    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        return fast.xgrad_cam_weights(A, G)


class LayerCAM(LayerMethod):
    """LayerCAM (Jiang et al., 2021): ``L = ReLU(sum_k ReLU(G_k) * A_k)``, a weight per position."""

    name = "layercam"

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        return fast.layer_cam(probe.activations[name], probe.gradients[name]), None


class HiResCAM(LayerMethod):
    """HiResCAM (Draelos & Carin, 2020): ``L = ReLU(sum_k G_k * A_k)``, faithful to the model's computation."""

    name = "hirescam"

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        return fast.hires_cam(probe.activations[name], probe.gradients[name]), None


class EigenCAM(LayerMethod):
    """Eigen-CAM (Muhammad & Yeasin, 2020): the activations' first principal component; no gradient enters
    the map (and it is the same for every target)."""

    name = "eigencam"

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        return ref.eigen_cam(probe.activations[name]), None
