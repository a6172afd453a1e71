"""SS-CAM and IS-CAM: Score-CAM with each channel's score averaged over changed copies of its mask.

Both run Score-CAM's batches (``ScoreCAM.layer_map``) with ``n_samples`` rows per channel instead of one; they
differ only in the copies of the mask (``gradcam.reference.score_variants``). ``weighting`` is Score-CAM's:
``"classes"`` (the authors' softmax over the classes, averaged over the copies) or ``"channels"`` (the averaged
raw scores through a softmax over the channels, torchcam's ``SSCAM`` and ``ISCAM``).
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradcam.backends.common import positive_int
from gradcam.methods.perturbation import ScoreCAM
from gradcam.reference import score_variants as rules


class SSCAM(ScoreCAM):
    """SS-CAM (Wang, Naidu et al., 2020): ``w_k = (1/N) sum_i softmax(f(x * (M_k + sigma delta_i)))_c`` with
    ``delta_i ~ N(0, 1)`` per pixel, ``L = ReLU(sum_k w_k A_k)``; the paper's first variant, noise on the mask.

    The noise is drawn in NumPy, one field of the grid's shape (``(H, W)`` for images) per masked copy, in the
    order of Score-CAM's rows (image, channel, copy), restarting from ``seed`` for every layer: the same map in
    every framework and any batch size.
    Cost: ``n_samples`` forwards per channel and image (torchcam's default ``n_samples=35``, ``sigma=2``).
    """

    name = "sscam"

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        n_samples: int = 35,
        sigma: float = 2.0,
        seed: int = 0,
        **options: Any,
    ) -> None:
        super().__init__(model, layer, **options)
        self.n_samples = positive_int(n_samples, "n_samples")
        if sigma < 0:
            raise ValueError(f"sigma must be non-negative, got {sigma}")
        self.sigma, self.seed = float(sigma), seed

    def mask_copies(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        rng = np.random.default_rng(self.seed)

        def noisy(masks: np.ndarray, s: np.ndarray) -> np.ndarray:
            return rules.ss_cam_masks(masks, rng.standard_normal(masks.shape, dtype=np.float32), self.sigma)

        return noisy


class ISCAM(ScoreCAM):
    """IS-CAM (Naidu et al., 2020): ``w_k = (1/N) sum_i softmax(f(x * c_i M_k))_c`` with the integrated scales
    ``c_i = sum_{j=1..i} j / N`` (``gradcam.reference.score_variants.is_cam_coefficients``),
    ``L = ReLU(sum_k w_k A_k)``. No randomness. Cost: ``n_samples`` forwards per channel and image (torchcam's
    default 10).
    """

    name = "iscam"

    def __init__(self, model: Any, layer: Any = None, *, n_samples: int = 10, **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.n_samples = positive_int(n_samples, "n_samples")

    def mask_copies(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
        c = rules.is_cam_coefficients(self.n_samples).astype(np.float32)
        return lambda masks, s: masks * c[s].reshape(-1, *[1] * (masks.ndim - 1))
