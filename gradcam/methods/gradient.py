"""Methods that weigh a layer's activations by the gradients of the target score (one forward, one backward).

They run the float32 forms of the formulas (``gradcam.reference.fast``), tested against the float64 ones.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.backends import Probe
from gradcam.explanation import Explanation
from gradcam.methods.base import ChannelWeightMethod, LayerMethod
from gradcam.methods.diagnosis import singular_weight_warnings, with_warnings
from gradcam.reference import cams, fast


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


def non_negative(value: float, what: str) -> float:
    """``value`` as a float, if it is finite and at least 0."""
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be a finite number >= 0, got {value!r}")
    return value


class GradCAMPlusPlus(ChannelWeightMethod):
    """Grad-CAM++ (Chattopadhyay et al., 2018), the exponential-score closed form of its eq. 19:
    ``a = G^2 / (2 G^2 + S_k G^3) = 1 / (2 + S_k G)``, ``w_k = sum_ij a ReLU(G)``, ``L = ReLU(sum_k w_k A_k)``.

    Eq. 19 assumes activations ``A >= 0`` (a layer after a ReLU), where ``0 < a <= 1/2``. Where a channel's
    activations sum to a negative ``S_k``, ``2 + S_k G`` vanishes at ``G = -2 / S_k``: ``a`` is 0 where the
    denominator is 0 or negative, and a ``SingularWeightWarning`` names the images where some ``a`` passes 1
    (``gradcam.reference.cams.grad_cam_pp_weights`` states the rule).

    Parameters
    ----------
    variant : ``"paper"`` (default, eq. 19) or ``"seed"``: the code quoted in seed 001, whose denominator is
        ``2 G^2 + sum_ab A_kab G_kab^3`` (a sum over the grid instead of ``S_k G_kij^3``), kept for comparison.
    eps : added to the denominator of ``a`` where ``G != 0``, ``a = G^2 / (2 G^2 + S_k G^3 + eps)``: pytorch-grad-
        cam's form with ``eps=1e-6``. The default 0 is the paper's (``a`` is 0 where the denominator is). With
        gradients about 1e-3, as at the last layers of real networks, ``G^2`` is as small as the epsilon, which
        moved the normalized maps of random-initialized torchvision networks by 0.005 to 0.48 (README).

    Its maps change when the score is multiplied by a constant (``G`` then scales and ``2 + S_k G`` does not
    scale with it), unlike Grad-CAM's: the exponential score ``exp(c y)`` is a different function of ``y``.
    """

    name = "gradcam++"

    def __init__(
        self, model: Any, layer: Any = None, *, variant: str = "paper", eps: float = 0.0, **options: Any
    ) -> None:
        if variant not in cams.GRAD_CAM_PP_VARIANTS:
            raise ValueError(
                f"unknown Grad-CAM++ variant {variant!r}; variants are {', '.join(cams.GRAD_CAM_PP_VARIANTS)}"
            )
        super().__init__(model, layer, **options)
        self.eps = non_negative(eps, "eps")
        self.variant = variant
        if variant != "paper":
            self.name = f"gradcam++ ({variant} variant)"

    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        if self.eps:
            A, G = A.astype(np.float64), G.astype(np.float64)
            grid = tuple(range(2, A.ndim))
            S = A.sum(axis=grid, keepdims=True)
            a = np.where(G != 0, G**2 / (2 * G**2 + S * G**3 + self.eps), 0.0)
            return (a * ref.relu(G)).sum(axis=grid).astype(np.float32)
        if self.variant == "paper":
            return fast.grad_cam_pp_weights(A, G)
        return ref.grad_cam_pp_weights(A, G, self.variant)

    def _singular(self, A: np.ndarray, G: np.ndarray) -> np.ndarray:
        """Per image (the paper's form) or per position (the seed's), where some ``a`` leaves ``[0, 1]``."""
        if self.variant == "paper":
            return fast.grad_cam_pp_singular_images(A, G)
        return cams.grad_cam_pp_singular(A, G, self.variant)

    def explain_probe(self, probe: Probe) -> Explanation:
        explanation = super().explain_probe(probe)
        found = []
        for name in probe.layers:
            singular = self._singular(probe.activations[name], probe.gradients[name])
            found += singular_weight_warnings(self.name, name, singular)
        return with_warnings(explanation, found, self.quiet)


class XGradCAM(ChannelWeightMethod):
    """XGrad-CAM (Fu et al., 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij``.

    Parameters
    ----------
    eps : added to every channel's sum, ``w_k = sum_ij A_kij G_kij / (sum_ab A_kab + eps)``: pytorch-grad-cam's
        form with ``eps=1e-7``. The default 0 is the paper's (a channel whose activations sum to 0 weighs 0).
    """

    name = "xgradcam"

    def __init__(self, model: Any, layer: Any = None, *, eps: float = 0.0, **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.eps = non_negative(eps, "eps")

    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        if not self.eps:
            return fast.xgrad_cam_weights(A, G)
        A, G = A.astype(np.float64), G.astype(np.float64)
        grid = tuple(range(2, A.ndim))
        return ((A * G).sum(axis=grid) / (A.sum(axis=grid) + self.eps)).astype(np.float32)


class LayerCAM(LayerMethod):
    """LayerCAM (Jiang et al., 2021): ``L = ReLU(sum_k ReLU(G_k) * A_k)``, a weight per position."""

    name = "layercam"
    has_contributions = True

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        if not self.relu:
            return self.contributions_of(name, probe, None).sum(axis=1), None
        return fast.layer_cam(probe.activations[name], probe.gradients[name]), None

    def contributions_of(self, name: str, probe: Probe, weights: None) -> np.ndarray:
        """``C_k = ReLU(G_k) A_k``, the weight of each position."""
        return ref.channel_contributions(probe.activations[name], ref.relu(probe.gradients[name]))


class HiResCAM(LayerMethod):
    """HiResCAM (Draelos & Carin, 2020): ``L = ReLU(sum_k G_k * A_k)``, faithful to the model's computation."""

    name = "hirescam"
    has_contributions = True

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        if not self.relu:
            return self.contributions_of(name, probe, None).sum(axis=1), None
        return fast.hires_cam(probe.activations[name], probe.gradients[name]), None

    def contributions_of(self, name: str, probe: Probe, weights: None) -> np.ndarray:
        """``C_k = G_k A_k``, the gradient at each position as its weight."""
        return ref.channel_contributions(probe.activations[name], probe.gradients[name])


class EigenCAM(LayerMethod):
    """Eigen-CAM (Muhammad & Yeasin, 2020): the activations' first principal component; no gradient enters
    the map (and it is the same for every target). The sign of the component is chosen from the projection
    itself (``gradcam.reference.eigen_cam``), so a map is all zero only for a layer whose activations are.

    Parameters
    ----------
    centred : subtract each channel's mean over the positions before the SVD, as pytorch-grad-cam does
        (default False: the paper's uncentred form).
    """

    name = "eigencam"
    uses_gradients = False

    def __init__(self, model: Any, layer: Any = None, *, centred: bool = False, **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.centred = bool(centred)

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        return ref.eigen_cam(probe.activations[name], centred=self.centred), None
