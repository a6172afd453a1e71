"""Post-processing shared by every method and backend: bilinear upsampling and min-max normalisation."""
from __future__ import annotations

import numpy as np


def bilinear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """The ``(n_out, n_in)`` matrix of 1-D bilinear interpolation with half-pixel centres.

    Output pixel ``i`` samples the input at ``s = (i + 1/2) n_in / n_out - 1/2``, clamped to
    ``[0, n_in - 1]``, mixing its two neighbours ``floor(s)`` and ``floor(s) + 1`` by distance
    (``align_corners=False``, edges clamped, no antialiasing).
    """
    if n_out < 1 or n_in < 1:
        raise ValueError(f"sizes must be positive, got n_out={n_out}, n_in={n_in}")
    s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    s = np.clip(s, 0.0, n_in - 1)
    lower = np.floor(s).astype(np.int64)
    upper = np.minimum(lower + 1, n_in - 1)
    frac = s - lower
    R = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    np.add.at(R, (rows, lower), 1.0 - frac)
    np.add.at(R, (rows, upper), frac)
    return R


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)``: ``R_h @ m @ R_w^T`` per map.

    The same numbers as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    ``tf.image.resize(method="bilinear")``, ``jax.image.resize(..., "linear")``, OpenCV's
    ``INTER_LINEAR`` and Pillow's ``BILINEAR`` give when enlarging.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, h, w), got {maps.ndim}-D shape {maps.shape}")
    H, W = (int(v) for v in size)
    R_h = bilinear_matrix(H, maps.shape[1])
    R_w = bilinear_matrix(W, maps.shape[2])
    return np.einsum("Hh,nhw,Ww->nHW", R_h, maps, R_w, optimize=True).astype(np.float32)


def normalize(maps: np.ndarray) -> np.ndarray:
    """Per map, ``(m - min) / (max - min)`` over the last two axes; a flat map becomes zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim < 2:
        raise ValueError(f"maps must have shape (..., H, W), got shape {maps.shape}")
    low = maps.min(axis=(-2, -1), keepdims=True)
    span = maps.max(axis=(-2, -1), keepdims=True) - low
    out = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
    return out.astype(np.float32)
