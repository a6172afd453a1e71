"""Input-gradient heat maps: vanilla saliency and SmoothGrad (``gradcam.reference.saliency``).

They need no layer: the backend's plain ``input_gradient`` gives ``d y_c / d x``, and each pixel's value is read
off its colour channels. ``maps`` are ``(N, H, W)`` heat maps at the input's size, normalized like the CAM methods'.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam.backends import inputs as multi
from gradcam.backends.common import Target, positive_int
from gradcam.backends.probe import InputGradient
from gradcam.explanation import Explanation
from gradcam.methods.base import Method
from gradcam.methods.diagnosis import input_gradient_warnings
from gradcam.methods.smooth import channels_first_noise
from gradcam.reference import fast
from gradcam.reference import saliency as rules


class Saliency(Method):
    """Vanilla gradient saliency (Simonyan et al., ICLR workshops 2014): ``M_ij = max_c |d y_c / d x_cij|``.

    One forward and one backward to the input per batch. ``raw`` holds ``M`` (layer ``"input"``), ``maps`` its
    normalization. A warning names the images whose gradient is zero everywhere.
    """

    name = "saliency"
    takes_layer = False

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        result = self.backend.input_gradient(self.model, self.inputs(x), target, rule="plain")
        return self.explained(rules.saliency(result.gradient, grid=result.gradient.ndim - 2), result)

    def explained(self, raw: np.ndarray, clean: InputGradient) -> Explanation:
        """The explanation whose raw map is ``raw`` ``(N, *grid)`` (``(N, H, W)`` for images), for the targets of the
        clean pass ``clean``."""
        explanation = Explanation(
            maps=fast.normalize(raw, grid=raw.ndim - 1),
            targets=clean.targets,
            scores=clean.scores,
            method=self.name,
            layers=["input"],
            raw_by_layer={"input": raw},
            logits=clean.logits,
            grid=raw.ndim - 1,
        )
        return self.warned(explanation, input_gradient_warnings(self.name, "plain", clean))


class SmoothGrad(Saliency):
    """SmoothGrad (Smilkov et al., 2017): the saliency map averaged over ``n_samples`` noisy copies
    ``x + N(0, sigma^2)`` of each image, ``sigma = noise_level * (max(x) - min(x))`` per image (the paper's 10-20%
    of the input's range), ``M_hat = (1/n) sum_t M(x + noise_t)``; ``variant`` picks ``M``
    (``gradcam.reference.saliency.smooth_grad``): ``"abs"`` the saliency map, ``"signed"`` the signed gradient
    (the saliency rule applied after the mean), ``"square"`` its square (SmoothGrad-Squared).

    Every copy is explained for the clean image's target, found by one clean pass (which gives ``scores`` and
    ``targets``); the copies go through the model ``batch_size`` at a time. Seeded: the noise is drawn in NumPy in
    the channels-first order whatever the framework, as for Smooth Grad-CAM++, so the same ``seed`` gives the same
    map in every framework and any batch size. Cost: ``n_samples + 1`` forwards and backwards to the input per
    image; the copies' gradients are held at once, ``n_samples`` times the input's size.
    """

    name = "smoothgrad"

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        n_samples: int = 25,
        noise_level: float = 0.15,
        variant: str = "abs",
        seed: int = 0,
        batch_size: int = 16,
        **options: Any,
    ) -> None:
        super().__init__(model, layer, **options)
        self.n_samples = positive_int(n_samples, "n_samples")
        self.batch_size = positive_int(batch_size, "batch_size")
        if noise_level < 0:
            raise ValueError(f"noise_level must be non-negative, got {noise_level}")
        if variant not in rules.SMOOTH_GRAD_VARIANTS:
            raise ValueError(f"variant must be one of {', '.join(rules.SMOOTH_GRAD_VARIANTS)}, got {variant!r}")
        self.noise_level, self.variant, self.seed = noise_level, variant, seed

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        x = self.inputs(x)
        clean = self.backend.input_gradient(self.model, x, target, rule="plain")
        copy_target = target if callable(target) else clean.targets
        gradients = self.noisy_gradients(x, copy_target, clean.gradient.shape[2:])
        return self.explained(rules.smooth_grad(gradients, self.variant, grid=gradients.ndim - 3), clean)

    def noisy_gradients(self, x: Any, target: Any, input_size: tuple[int, ...]) -> np.ndarray:
        """The ``(n_samples, N, C, *grid)`` input gradients of the noisy copies of the images ``x`` (model layout;
        with several inputs, noise on the explained one only, the others' rows copied)."""
        images = self.backend.to_numpy(x)
        n = images.shape[0]
        axes = tuple(range(1, images.ndim))
        sigma = (self.noise_level * (images.max(axis=axes) - images.min(axis=axes))).astype(np.float32)
        per_image = (-1,) + (1,) * (images.ndim - 1)
        rng = np.random.default_rng(self.seed)
        copy_of = np.arange(self.n_samples * n) % n  # copies are t-major: copy i is of image i % n
        gradients = []
        for start in range(0, copy_of.size, self.batch_size):
            which = copy_of[start : start + self.batch_size]
            noise = channels_first_noise(rng, which.size, images.shape, input_size)
            noisy = images[which] + noise * sigma[which].reshape(per_image)
            batch_target = target if callable(target) else target[which]
            copies = multi.replaced(x, noisy, which)
            gradients.append(self.backend.input_gradient(self.model, copies, batch_target, rule="plain").gradient)
        stacked = np.concatenate(gradients)
        return stacked.reshape(self.n_samples, n, *stacked.shape[1:])
