"""Eigen-Grad-CAM, KPCA-CAM, FEM and Finer-CAM (issue 16): one short class each over the formulas of
``gradcam.reference.family``. Each reads only the probe's ``A`` and ``G`` (Finer-CAM: the ``G`` of several
classes), so every backend runs them.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from gradcam.backends import Probe
from gradcam.backends import inputs as multi
from gradcam.backends.common import Target
from gradcam.methods.base import ChannelWeightMethod, LayerMethod
from gradcam.reference import family, fast


class EigenGradCAM(LayerMethod):
    """Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``): the first principal component of ``A * G``
    (``gradcam.reference.family.eigen_grad_cam``), oriented as Eigen-CAM's.

    Parameters
    ----------
    centred : subtract each channel's mean over the positions before the SVD, as pytorch-grad-cam does
        (default False, as our ``EigenCAM``).
    """

    name = "eigengradcam"

    def __init__(self, model: Any, layer: Any = None, *, centred: bool = False, **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.centred = bool(centred)

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        return family.eigen_grad_cam(probe.activations[name], probe.gradients[name], centred=self.centred), None


class KPCACAM(LayerMethod):
    """KPCA-CAM (Karmani et al., 2024): the positions' scores on the first kernel principal component of the
    activations (``gradcam.reference.family.kpca_cam``); no gradient enters the map.

    It finds the largest eigenpair of a ``Z x Z`` kernel matrix per image (``Z`` positions): milliseconds for a
    14 x 14 layer, seconds for a 56 x 56 one.

    Parameters
    ----------
    kernel : ``"rbf"`` (default), ``"poly"``, ``"sigmoid"`` (pytorch-grad-cam's default) or ``"linear"``
        (centred Eigen-CAM).
    gamma : the kernel's coefficient (default ``1 / K``, as scikit-learn's).
    """

    name = "kpcacam"
    uses_gradients = False

    def __init__(
        self, model: Any, layer: Any = None, *, kernel: str = "rbf", gamma: float | None = None, **options: Any
    ) -> None:
        family.kernel_matrix(np.zeros((1, 1)), kernel, gamma)  # refuses an unknown kernel or a bad gamma now
        super().__init__(model, layer, **options)
        self.kernel, self.gamma = kernel, gamma

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        return family.kpca_cam(probe.activations[name], self.kernel, self.gamma), None


class FEM(LayerMethod):
    """FEM (Fuad et al., 2020): k-sigma masks of each channel weighted by the channel's mean, summed
    (``gradcam.reference.family.fem``, xplique's definition); gradient-free and the same for every target.

    Parameters
    ----------
    k : the threshold in standard deviations above each channel's mean (default 2).
    """

    name = "fem"
    uses_gradients = False

    def __init__(self, model: Any, layer: Any = None, *, k: float = 2.0, **options: Any) -> None:
        k = float(k)
        if not np.isfinite(k):
            raise ValueError(f"k must be a finite number, got {k!r}")
        super().__init__(model, layer, **options)
        self.k = k

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, None]:
        return family.fem(probe.activations[name], self.k), None


class FinerCAM(ChannelWeightMethod):
    """Finer-CAM (Zhang et al., CVPR 2025) on Grad-CAM: Grad-CAM of ``y^c - gamma sum_d p~_d y^d``, the target's
    score minus the weighted scores of the ``references`` classes whose logits are closest to it
    (``gradcam.reference.family.finer_cam`` states the formula and where it differs from pytorch-grad-cam).

    The comparison classes are chosen from the logits of the target's probe; their gradients come from a second
    probe of the batch repeated once per comparison class: ``1 + references`` forwards and backwards per image.
    ``scores`` are the explained differences; ``targets`` the classes ``c``.

    Parameters
    ----------
    gamma : the comparison strength (default 1; 0 gives Grad-CAM).
    references : how many of the most similar classes to compare with (default 3, pytorch-grad-cam's; fewer
        when the model has fewer other classes).
    """

    name = "finercam"

    def __init__(
        self, model: Any, layer: Any = None, *, gamma: float = 1.0, references: int = 3, **options: Any
    ) -> None:
        gamma = float(gamma)
        if not np.isfinite(gamma):
            raise ValueError(f"gamma must be a finite number, got {gamma!r}")
        if isinstance(references, bool) or int(references) != references or references < 1:
            raise ValueError(f"references must be a positive integer, got {references!r}")
        super().__init__(model, layer, **options)
        self.gamma, self.references = gamma, int(references)

    def probe(self, x: Any, target: Target) -> Probe:
        if callable(target):
            raise ValueError("Finer-CAM compares class scores; give target= a class index (or None), not a function")
        main = super().probe(x, target)
        if main.logits is None or main.logits.shape[1] < 2:
            raise ValueError("Finer-CAM needs a model whose output is the scores of two or more classes (N, classes)")
        references = min(self.references, main.logits.shape[1] - 1)
        chosen, weights = family.finer_references(main.logits, main.targets, references)
        batch = self.backend.to_numpy(x)
        # one batch for all comparison classes: copy r of the images is explained for its class chosen[:, r]
        copies = multi.replaced(x, np.concatenate([batch] * references), np.tile(np.arange(len(batch)), references))
        others = self.backend.probe(
            self.model, copies, main.layers, chosen.T.ravel(), reshape=self.reshape, at=self.at
        )
        gradients = {
            name: family.finer_gradient(
                G, others.gradients[name].reshape(references, *G.shape), weights, self.gamma
            ).astype(np.float32)
            for name, G in main.gradients.items()
        }
        scores = family.finer_score(main.logits, main.targets, chosen, weights, self.gamma)
        return dataclasses.replace(main, gradients=gradients, scores=scores)

    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        return fast.grad_cam_weights(G)
