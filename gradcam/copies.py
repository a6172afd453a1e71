"""Changed copies of images through the model, one batch buffer at a time (NumPy only, no framework).

Score-CAM, Ablation-CAM and occlusion (``gradcam.methods.perturbation``) and the faithfulness metrics
(``gradcam.metrics``) all score many changed copies of a few images: masked, ablated, occluded, with pixels
deleted or inserted. Every copy is one row of a batch; rows of all images share batches of ``batch_size`` rows,
written into one buffer that is reused from batch to batch, so the working memory is one batch of inputs,
whatever the number of copies. Copies are made in the model's own input layout; ``channels_last_view`` lets the
code that writes them address pixels the same way whatever that layout is.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def channels_last_view(batch: np.ndarray, channel_axis: int) -> np.ndarray:
    """``(N, *grid, C)`` view of a batch whose channels lie on ``channel_axis`` (a grid of 1 to 3 axes:
    ``(N, H, W, C)`` for images): writes go to ``batch``."""
    if not 3 <= batch.ndim <= 5:
        raise ValueError(f"expected a batch with 3 to 5 dimensions (N, C, *grid), got shape {tuple(batch.shape)}")
    return np.moveaxis(batch, channel_axis, -1)


def run_in_batches(
    rows: int,
    batch_size: int,
    row_shape: tuple[int, ...],
    fill: Callable[[np.ndarray, np.ndarray], None],
    forward: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """``forward`` over ``rows`` rows, ``batch_size`` at a time, each batch written by ``fill`` into one buffer.

    ``fill(batch, indices)`` writes rows ``indices`` into ``batch``; ``forward(batch, indices)`` returns one
    value per row. Returns the values of all rows, concatenated.
    """
    buffer = np.empty((min(batch_size, rows), *row_shape), dtype=np.float32)
    values = []
    for start in range(0, rows, batch_size):
        indices = np.arange(start, min(start + batch_size, rows))
        batch = buffer[: indices.size]
        fill(batch, indices)
        values.append(forward(batch, indices))
    return np.concatenate(values) if values else np.zeros(0)
