"""Deletion and insertion (Petsiuk et al., RISE, BMVC 2018): how fast the target's score falls when the most
important pixels are removed first, and how fast it rises when they are put in first."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam.backends.common import Target
from gradcam.metrics.checks import positive_steps
from gradcam.metrics.scoring import ScoredImages


def trapezoid_area(values: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """``sum_i (f_{i+1} - f_i) (v_i + v_{i+1}) / 2`` over the last axis: the area under the curve."""
    return (np.diff(fractions) * (values[..., 1:] + values[..., :-1]) / 2).sum(axis=-1)


def deletion_curve(
    model: Any,
    images: Any,
    maps: Any,
    target: Target = None,
    steps: int = 16,
    baseline: float | np.ndarray = 0.0,
    score: str = "probability",
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The target's score as the pixels are set to ``baseline``, most important (by the map) first.

    At the ``steps + 1`` fractions ``f_i = i / steps`` the ``floor(i * H * W / steps)`` highest pixels of the
    map (ties in row-major order) are removed in every channel. Signals and volumes alike: maps ``(N, *grid)``
    of the inputs' grid (``(N, C, *grid)`` or channels last), ``H * W`` then the grid's number of positions.
    Returns ``(scores (N, steps + 1), fractions (steps + 1,))``; ``scores[:, 0]`` is the score on the image
    itself. ``baseline``: a value, or an array in the images' layout broadcast to them (a blurred copy, say).
    ``score``: ``"probability"`` (softmax over the classes) or ``"raw"`` (the target's output). The target
    defaults to the top-1 class of the image; a target function (``gradcam.targets``) gives the score of each
    copy itself, from the model's NumPy outputs.
    """
    return _curve(model, images, maps, target, steps, baseline, score, batch_size, deleting=True)


def insertion_curve(
    model: Any,
    images: Any,
    maps: Any,
    target: Target = None,
    steps: int = 16,
    baseline: float | np.ndarray = 0.0,
    score: str = "probability",
    batch_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The target's score as the image's pixels are put into a ``baseline`` image, most important first.

    The mirror of ``deletion_curve``: at fraction ``f_i`` the ``floor(i * H * W / steps)`` highest pixels of
    the map come from the image and the others are ``baseline``; ``scores[:, -1]`` is the score on the image.
    """
    return _curve(model, images, maps, target, steps, baseline, score, batch_size, deleting=False)


def deletion_auc(
    model: Any,
    images: Any,
    maps: Any,
    target: Target = None,
    steps: int = 16,
    baseline: float | np.ndarray = 0.0,
    score: str = "probability",
    batch_size: int | None = None,
) -> np.ndarray:
    """Deletion (RISE): the area under ``deletion_curve`` over the fraction axis, by the trapezoid rule,
    ``(N,)``; lower is better (removing what the map points at destroys the score quickly)."""
    scores, fractions = deletion_curve(model, images, maps, target, steps, baseline, score, batch_size)
    return trapezoid_area(scores, fractions)


def insertion_auc(
    model: Any,
    images: Any,
    maps: Any,
    target: Target = None,
    steps: int = 16,
    baseline: float | np.ndarray = 0.0,
    score: str = "probability",
    batch_size: int | None = None,
) -> np.ndarray:
    """Insertion (RISE): the area under ``insertion_curve`` over the fraction axis, by the trapezoid rule,
    ``(N,)``; higher is better (what the map points at brings the score back quickly)."""
    scores, fractions = insertion_curve(model, images, maps, target, steps, baseline, score, batch_size)
    return trapezoid_area(scores, fractions)


def _curve(
    model: Any,
    images: Any,
    maps: Any,
    target: Target,
    steps: int,
    baseline: float | np.ndarray,
    score: str,
    batch_size: int | None,
    *,
    deleting: bool,
) -> tuple[np.ndarray, np.ndarray]:
    steps = positive_steps(steps)
    scored = ScoredImages(model, images, maps, target, score, batch_size)
    n_images, *grid = scored.maps.shape
    order = np.argsort(-scored.maps.reshape(n_images, -1), axis=1, kind="stable")
    counts = np.arange(steps + 1) * int(np.prod(grid)) // steps
    filler = scored.as_pixels(baseline)
    start, source = (scored.pixels, filler) if deleting else (filler, scored.pixels)

    def changed_copy(pixels: np.ndarray, n: int, step: int) -> None:
        positions = np.unravel_index(order[n, : counts[step]], grid)
        pixels[...] = start[n]
        pixels[positions] = source[n][positions]

    return scored.scores_of_copies(steps + 1, changed_copy), np.arange(steps + 1) / steps
