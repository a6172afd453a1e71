"""Grad-CAM++'s faithfulness metrics (Chattopadhyay et al., WACV 2018, section 6.1.1): the model's score on
the explanation map's regions alone, ``image * map``, against its score on the whole image."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam.backends.common import Target
from gradcam.metrics.scoring import ScoredImages


def explanation_scores(
    model: Any, images: Any, maps: Any, target: Target = None, score: str = "probability", batch_size: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(Y, O)``: per image, the target's score on the image and on ``image * map`` (the map broadcast over
    the colour channels), both ``(N,)`` float64. Signals and volumes alike: maps ``(N, *grid)`` of the inputs' grid.
    The target defaults to the top-1 class of the image; a target function (``gradcam.targets``) scores the
    NumPy outputs itself."""
    scored = ScoredImages(model, images, maps, target, score, batch_size)

    def explanation_only(pixels: np.ndarray, n: int, copy: int) -> None:
        np.multiply(scored.pixels[n], scored.maps[n][..., None], out=pixels, casting="unsafe")

    return scored.clean, scored.scores_of_copies(1, explanation_only)[:, 0]


def average_drop(
    model: Any, images: Any, maps: Any, target: Target = None, score: str = "probability", batch_size: int | None = None
) -> np.ndarray:
    """Average Drop: ``max(0, Y_c - O_c) / Y_c`` per image, ``(N,)`` in [0, 1] (the paper's percentage is 100
    times the mean); lower is better. ``Y_c``: the target's score on the image, ``O_c``: on ``image * map``.

    With ``score="probability"`` (softmax over the classes, as the paper) ``Y_c > 0``. With ``score="raw"`` a
    score ``Y_c <= 0`` has no meaningful share and raises ``ValueError``, as does a target function's score
    ``<= 0`` (its value is the score, whatever ``score`` says).
    """
    Y, O = explanation_scores(model, images, maps, target, score, batch_size)
    if (Y <= 0).any():
        raise ValueError(
            f"average drop divides by the score on the image, and image {int(np.argmax(Y <= 0))} has score "
            f"{Y[Y <= 0][0]:.4g} <= 0; use score='probability' with a class target, or a target function whose scores "
            "are positive"
        )
    return np.maximum(0.0, Y - O) / Y


def increase_in_confidence(
    model: Any, images: Any, maps: Any, target: Target = None, score: str = "probability", batch_size: int | None = None
) -> np.ndarray:
    """Increase in Confidence: ``O_c > Y_c`` per image, ``(N,)`` bool: the model is more confident in the target
    on the map's regions alone than on the whole image. The paper reports the share of such images."""
    Y, O = explanation_scores(model, images, maps, target, score, batch_size)
    return O > Y
