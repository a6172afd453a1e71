"""Adversarial images for the Grad-CAM paper's robustness check (Selvaraju et al., ICCV 2017, section 6.2): the
model is made certain that a class is absent, and the map for that class is then asked where the class is.

The perturbation is projected gradient descent in an L-infinity ball (Madry et al., ICLR 2018) on the class's
log-probability. Why the gradients come through the backend contract rather than through one framework's
autograd here: the attack must run on the torch, Keras and Flax models alike, and framework code lives in the
backends only. ``input_gradient(model, x, target=j)`` gives ``d z_j / d x`` for the logits ``z``; the rest is
NumPy::

    d log p_c / d x = d z_c / d x - sum_j p_j d z_j / d x,        p = softmax(z)

which costs one forward and backward per class and step (the default model has five classes).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcam.backends import get_backend


@dataclass(frozen=True)
class AttackResult:
    """Adversarial images and how far the attack got.

    Attributes
    ----------
    images
        The perturbed images, float32 in the model's own layout, within ``epsilon`` of the originals per pixel
        and inside the valid pixel range.
    probability
        ``(N,)`` the attacked class's probability on them.
    steps
        ``(N,)`` gradient steps taken on each image (0: it was below ``stop_probability`` from the start).
    reached
        ``(N,)`` bool: ``probability < stop_probability``.
    """

    images: np.ndarray
    probability: np.ndarray
    steps: np.ndarray
    reached: np.ndarray


def softmax(logits: np.ndarray) -> np.ndarray:
    """``p_j = exp(z_j - max z) / sum_k exp(z_k - max z)`` over the last axis, in float64."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def log_probability_gradient(model: Any, x: np.ndarray, classes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``d log p_c / d x`` for class ``classes[n]`` of each image, in ``x``'s layout, and the probabilities
    ``p`` ``(N, C)`` at ``x``: ``d z_c / d x - sum_j p_j d z_j / d x`` from one ``input_gradient`` per class."""
    backend = get_backend(model)
    first = backend.input_gradient(model, x, target=0)
    if first.logits is None or first.logits.ndim != 2:
        raise ValueError("the attack needs a classifier whose output is (N, classes) logits")
    p = softmax(first.logits)
    gradient = np.zeros(first.gradient.shape, dtype=np.float64)
    per_image = (-1,) + (1,) * (gradient.ndim - 1)
    for j in range(p.shape[1]):
        g = first.gradient if j == 0 else backend.input_gradient(model, x, target=j).gradient
        gradient -= p[:, j].reshape(per_image) * g
        gradient[classes == j] += g[classes == j]
    # the backends hand gradients over channels first; the images move in the model's own layout
    if backend.input_channel_axis(model) != 1:
        gradient = np.moveaxis(gradient, 1, -1)
    return gradient, p


def pgd_absent(
    model: Any,
    images: Any,
    classes: Any,
    epsilon: float = 8 / 255,
    step_size: float = 2 / 255,
    steps: int = 20,
    stop_probability: float = 1e-3,
    bounds: tuple[float, float] = (0.0, 1.0),
    batch_size: int | None = None,
) -> AttackResult:
    """Projected gradient descent that drives ``p_c`` below ``stop_probability`` for class ``classes[n]`` of
    each image, within an L-infinity ball of radius ``epsilon`` (Madry et al., 2018):

    ``x_{t+1} = clip_bounds( clip_[x_0 - eps, x_0 + eps]( x_t - step_size * sign(d log p_c(x_t) / d x) ) )``

    started at ``x_0`` itself (no random start: reproducible). An image stops moving once ``p_c`` is below
    ``stop_probability``, or after ``steps`` steps. ``images``: a batch in the model's own layout with pixel
    values within ``bounds``; ``classes``: one class index per image. ``batch_size`` images go through the
    backend at a time (``None``: all).
    """
    backend = get_backend(model)
    x0 = np.asarray(backend.to_numpy(images), dtype=np.float32)
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    if len(classes) != len(x0):
        raise ValueError(f"got {len(classes)} classes for {len(x0)} images; give one class per image")
    if not epsilon > 0 or not step_size > 0 or int(steps) != steps or steps < 0:
        raise ValueError(
            f"epsilon and step_size must be positive and steps a whole number >= 0, got {epsilon}, {step_size}, {steps}"
        )
    if not 0 < stop_probability < 1:
        raise ValueError(f"stop_probability must lie in (0, 1), got {stop_probability}")
    low, high = bounds
    if x0.min() < low or x0.max() > high:
        raise ValueError(f"the images' pixels lie in [{x0.min():.3g}, {x0.max():.3g}], outside bounds {bounds}")
    chunk = len(x0) if batch_size is None else int(batch_size)
    floor, ceiling = np.maximum(x0 - epsilon, low), np.minimum(x0 + epsilon, high)
    x = x0.copy()
    taken = np.zeros(len(x0), dtype=np.int64)
    active = np.ones(len(x0), dtype=bool)
    for _ in range(int(steps)):
        for start in range(0, len(x0), max(chunk, 1)):
            part = np.flatnonzero(active[start : start + chunk]) + start
            if not part.size:
                continue
            gradient, p = log_probability_gradient(model, x[part], classes[part])
            moving = p[np.arange(part.size), classes[part]] >= stop_probability
            active[part[~moving]] = False
            part, gradient = part[moving], gradient[moving]
            x[part] = np.clip(x[part] - step_size * np.sign(gradient), floor[part], ceiling[part])
            taken[part] += 1
        if not active.any():
            break
    probability = softmax(backend.predict(model, x, batch_size=batch_size))[np.arange(len(x)), classes]
    return AttackResult(x, probability, taken, probability < stop_probability)
