"""Post-processing shared by every method and backend: bilinear upsampling and min-max normalisation."""
from __future__ import annotations

import numpy as np


def bilinear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The two input neighbours of each output pixel of 1-D bilinear interpolation, and the weight of the second.

    Output pixel ``i`` samples the input at ``s = (i + 1/2) n_in / n_out - 1/2`` (half-pixel centres),
    clamped to ``[0, n_in - 1]``, and mixes ``lower = floor(s)`` and ``upper = min(lower + 1, n_in - 1)``
    as ``(1 - frac) * lower + frac * upper`` with ``frac = s - lower`` (``align_corners=False``, edges
    clamped, no antialiasing). Returns ``(lower, upper, frac)``, each of length ``n_out``.
    """
    if n_out < 1 or n_in < 1:
        raise ValueError(f"sizes must be positive, got n_out={n_out}, n_in={n_in}")
    s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    lower = np.floor(s).astype(np.int64)
    upper = np.minimum(lower + 1, n_in - 1)
    return lower, upper, s - lower


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix ``R`` of 1-D bilinear interpolation (``bilinear_taps``): row ``i`` holds
    ``1 - frac`` at ``lower`` and ``frac`` at ``upper``, so that resizing a vector is ``R @ v``."""
    lower, upper, frac = bilinear_taps(n_out, n_in)
    R = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(R, (rows, lower), 1.0 - frac)
    np.add.at(R, (rows, upper), frac)
    return R


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)``: ``R_h @ m @ R_w^T`` per map (``bilinear_matrix``).

    The same numbers as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    ``tf.image.resize(method="bilinear")``, ``jax.image.resize(..., "linear")``, OpenCV's
    ``INTER_LINEAR`` and Pillow's ``BILINEAR`` give when enlarging.

    Each row of ``R`` has two non-zero entries, so the products are computed from the taps directly:
    rows first, then columns. Besides costing ``2 (N H w + N H W)`` multiplications instead of a matrix
    product, this makes no BLAS call: OpenBLAS threads spin for a while after each call, and beside a
    framework's own threads on the same cores that spinning slowed Score-CAM's forwards by 1.7x.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, h, w), got {maps.ndim}-D shape {maps.shape}")
    H, W = (int(v) for v in size)
    lower, upper, frac = bilinear_taps(H, maps.shape[1])
    rows = maps[:, lower, :] * (1.0 - frac)[:, None] + maps[:, upper, :] * frac[:, None]
    lower, upper, frac = bilinear_taps(W, maps.shape[2])
    return (rows[:, :, lower] * (1.0 - frac) + rows[:, :, upper] * frac).astype(np.float32)


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per map, ``(m - min) / (max - min)`` over the last two axes; a flat map becomes zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2:
        raise ValueError(f"maps must have shape (..., H, W), got shape {maps.shape}")
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    out = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
    return out.astype(np.float32)
