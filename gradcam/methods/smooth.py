"""Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ with its derivatives averaged over noisy copies."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.backends import Probe
from gradcam.backends import inputs as multi
from gradcam.backends.common import Target
from gradcam.explanation import Explanation
from gradcam.methods.base import LayerMethod, channel_map, eigen_smooth_option
from gradcam.methods.diagnosis import singular_weight_warnings, with_warnings
from gradcam.reference import cams


@dataclass
class NoisyProbe(Probe):
    """A clean probe plus the gradients ``(T, N, K, h, w)`` per layer and scores ``(T, N)`` of T noisy copies."""

    noisy_gradients: dict[str, np.ndarray] | None = None
    noisy_scores: np.ndarray | None = None


class SmoothGradCAMPlusPlus(LayerMethod):
    """Smooth Grad-CAM++: ``n_samples`` noisy copies ``x + N(0, sigma^2)``, ``sigma = noise_level * (max(x) -
    min(x))`` per image; the copies' gradients ``G_t`` and scores ``y_t`` give
    ``D_p = mean_t exp(y_t - max_t y_t) G_t^p`` (p = 1, 2, 3), ``a = D2 / (2 D2 + S_k D3)``,
    ``w_k = sum_ij a ReLU(D1)`` and ``L = ReLU(sum_k w_k A_k)`` with ``A`` of the clean input.

    The copies go through the model ``batch_size`` at a time (copies of several images share a batch), and
    every copy is explained for the clean image's target. Seeded: the same ``seed`` gives the same map,
    whatever the batch size.

    The noise level is SmoothGrad's (Smilkov et al., 2017, who found 10-20% of the input's range to work
    well); Omeiza et al. take their noise from it. As in Grad-CAM++, ``a`` is 0 where ``2 D2 + S_k D3`` is 0 or
    negative, and a ``SingularWeightWarning`` names the images where some ``a`` passes 1 (possible only when
    activations can be negative).

    ``eigen_smooth`` (``False``, ``True`` or ``"centred"``): the map is the first principal component of the
    weighted activations ``w_k A_k`` instead of their sum, as for every channel-weighting method
    (``gradcam.methods.base.ChannelWeightMethod``); the weights ``w_k`` are unchanged.
    """

    has_contributions = True
    name = "smoothgradcam++"

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        n_samples: int = 8,
        noise_level: float = 0.15,
        seed: int = 0,
        batch_size: int = 16,
        eigen_smooth: bool | str = False,
        **options: Any,
    ) -> None:
        self.eigen_smooth = eigen_smooth_option(eigen_smooth, options.get("relu", True))
        super().__init__(model, layer, **options)
        if n_samples < 1 or batch_size < 1:
            raise ValueError(f"n_samples and batch_size must be at least 1, got {n_samples} and {batch_size}")
        if noise_level < 0:
            raise ValueError(f"noise_level must be non-negative, got {noise_level}")
        self.n_samples, self.noise_level, self.seed, self.batch_size = n_samples, noise_level, seed, batch_size

    def probe(self, x: Any, target: Target) -> NoisyProbe:
        clean = super().probe(x, target)
        copy_target = target if callable(target) else clean.targets
        gradients, scores = self._noisy_gradients(x, copy_target, clean.layers, clean.input_size)
        return NoisyProbe(**vars(clean), noisy_gradients=gradients, noisy_scores=scores)

    def _noisy_gradients(
        self, x: Any, target: Any, layers: list[str], input_size: tuple[int, ...]
    ) -> tuple[dict, np.ndarray]:
        images = self.backend.to_numpy(x)  # with several inputs, the noise goes on the explained one only
        n = images.shape[0]
        per_image = (-1,) + (1,) * (images.ndim - 1)
        axes = tuple(range(1, images.ndim))
        sigma = (self.noise_level * (images.max(axis=axes) - images.min(axis=axes))).astype(np.float32)
        rng = np.random.default_rng(self.seed)
        copy_of = np.arange(self.n_samples * n) % n  # copies are t-major: copy i is of image i % n
        gradients: dict[str, list[np.ndarray]] = {name: [] for name in layers}
        scores = []
        for start in range(0, copy_of.size, self.batch_size):
            which = copy_of[start : start + self.batch_size]
            noise = channels_first_noise(rng, which.size, images.shape, input_size)
            noisy = images[which] + noise * sigma[which].reshape(per_image)
            batch_target = target if callable(target) else target[which]
            copies = multi.replaced(x, noisy, which)
            probe = self.backend.probe(self.model, copies, layers, batch_target, reshape=self.reshape, at=self.at)
            for name in layers:
                gradients[name].append(probe.gradients[name])
            scores.append(probe.scores)
        shape = (self.n_samples, n)
        stacked = {name: np.concatenate(g).reshape(*shape, *g[0].shape[1:]) for name, g in gradients.items()}
        return stacked, np.concatenate(scores).reshape(shape)

    def layer_map(self, name: str, probe: NoisyProbe) -> tuple[np.ndarray, np.ndarray]:
        A, Gs, ys = probe.activations[name], probe.noisy_gradients[name], probe.noisy_scores
        weights = ref.smooth_grad_cam_pp_weights(A, Gs, ys)
        return channel_map(A, weights, self.eigen_smooth, ref.weighted_map, self.relu), weights

    def explain_probe(self, probe: NoisyProbe) -> Explanation:
        explanation = super().explain_probe(probe)
        found = []
        for name in probe.layers:
            A, Gs, ys = probe.activations[name], probe.noisy_gradients[name], probe.noisy_scores
            found += singular_weight_warnings(self.name, name, cams.smooth_grad_cam_pp_singular(A, Gs, ys))
        return with_warnings(explanation, found, self.quiet)


def channels_first_noise(
    rng: np.random.Generator, count: int, shape: tuple[int, ...], input_size: tuple[int, ...]
) -> np.ndarray:
    """Standard normal noise drawn in the canonical (count, C, *grid) order and laid out like the input.

    Drawing in one order whatever the framework's layout gives every framework the same noisy copies, so
    Smooth Grad-CAM++ agrees across frameworks like every other method. The layout is read off the input's
    shape against the model's grid ``input_size`` (channels last when the grid sits on axes 1 to -2).
    """
    channels_last = tuple(shape[2:]) != tuple(input_size) and tuple(shape[1:-1]) == tuple(input_size)
    if not channels_last:
        return rng.standard_normal(size=(count, *shape[1:]), dtype=np.float32)
    noise = rng.standard_normal(size=(count, shape[-1], *shape[1:-1]), dtype=np.float32)
    return np.ascontiguousarray(np.moveaxis(noise, 1, -1))
