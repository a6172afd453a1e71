"""The model side of the metrics: a batch of images in the model's layout, its targets, and the target's
score on changed copies, computed through the model's backend in batches."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from gradcam.backends import get_backend
from gradcam.backends.common import TOP1, Target, class_targets, positive_int
from gradcam.copies import channels_last_view, run_in_batches
from gradcam.metrics.checks import as_maps
from gradcam.reference.scores import SCORES
from gradcam.targets import copy_scores, model_outputs


class ScoredImages:
    """Images, their maps, and the model's score of each image's target (top-1 of the clean image by default).

    Attributes
    ----------
    images : the batch as float32 NumPy in the model's layout.
    channel_axis : the channel axis of ``images``.
    pixels : an ``(N, *grid, C)`` view of ``images`` (``(N, H, W, C)`` for images; a grid of 1 to 3 axes).
    maps : ``(N, *grid)`` float64.
    targets : ``(N,)`` class per image (-1 for a target function).
    clean : ``(N,)`` float64 score of each image's target on the image itself.

    The target is any single target (``gradcam.targets``): classes, scored by ``score``, or a target function,
    whose score of each changed copy is its own value on the copies' NumPy outputs (``copy_scores``).
    """

    def __init__(
        self, model: Any, images: Any, maps: Any, target: Target, score: str, batch_size: int | None
    ) -> None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.model, self.score, self.target = model, score, target
        self.backend = get_backend(model)
        self.batch_size = 64 if batch_size is None else positive_int(batch_size, "batch_size")
        self.images = self.backend.to_numpy(images)
        self.channel_axis = self.backend.input_channel_axis(model)
        self.pixels = channels_last_view(self.images, self.channel_axis)
        self.maps = as_maps(maps, self.pixels.shape[1:-1])
        if len(self.maps) != len(self.images):
            raise ValueError(f"got {len(self.maps)} maps for {len(self.images)} images")
        outputs = model_outputs(self.backend, model, self.images, target, self.batch_size)
        n_images = len(self.images)
        self.targets = np.full(n_images, TOP1, dtype=np.int64) if callable(target) else class_targets(target, outputs)
        self.clean = copy_scores(outputs, target, self.targets, np.arange(n_images), score)

    def as_pixels(self, values: float | np.ndarray) -> np.ndarray:
        """A scalar or an array in the images' layout, broadcast to the images, as an ``(N, *grid, C)`` view."""
        try:
            full = np.broadcast_to(np.asarray(values, dtype=np.float32), self.images.shape)
        except ValueError:
            raise ValueError(
                f"a baseline of shape {np.shape(values)} does not fit images of shape {self.images.shape}"
            ) from None
        return channels_last_view(full, self.channel_axis)

    def scores_of_copies(self, copies_per_image: int, fill: Callable[[np.ndarray, int, int], None]) -> np.ndarray:
        """``(N, copies_per_image)`` target scores of changed copies of every image.

        ``fill(pixels, n, j)`` writes copy ``j`` of image ``n`` into ``pixels``, a ``(*grid, C)`` view of one
        row of the (reused) batch buffer.
        """
        n_images = len(self.images)

        def fill_batch(batch: np.ndarray, rows: np.ndarray) -> None:
            view = channels_last_view(batch, self.channel_axis)
            for i, row in enumerate(rows):
                fill(view[i], int(row) // copies_per_image, int(row) % copies_per_image)

        def forward(batch: np.ndarray, rows: np.ndarray) -> np.ndarray:
            outputs = model_outputs(self.backend, self.model, batch, self.target)
            return copy_scores(outputs, self.target, self.targets, rows // copies_per_image, self.score)

        rows = n_images * copies_per_image
        scores = run_in_batches(rows, self.batch_size, self.images.shape[1:], fill_batch, forward)
        return scores.reshape(n_images, copies_per_image)
