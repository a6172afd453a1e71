"""Post-processing shared by every method and backend: upsampling (bilinear, or nearest or bicubic on request)
and min-max normalisation, for maps over a grid of one to three axes (signals, images, volumes)."""
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


def upsample(maps: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Bilinear resize of ``(N, h, w)`` maps to ``(N, H, W)``: ``R_h @ m @ R_w^T`` per map (``bilinear_matrix``).

    The same numbers as ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False)``,
    ``tf.image.resize(method="bilinear")``, ``jax.image.resize(..., "linear")``, OpenCV's
    ``INTER_LINEAR`` and Pillow's ``BILINEAR`` give when enlarging.

    The grid may have one axis (``(N, L)`` to ``(N, L')``: linear) or three (``(N, d, h, w)`` to
    ``(N, D, H, W)``: trilinear, torch's ``mode="trilinear"``): the same 1-D rule along each axis in turn,
    ``size`` giving one output length per axis.

    Each row of ``R`` has two non-zero entries, so the products are computed from the taps directly, one axis
    after the other (rows, then columns). Besides costing ``2 (N H w + N H W)`` multiplications instead of a
    matrix product, this makes no BLAS call: OpenBLAS threads spin for a while after each call, and beside a
    framework's own threads on the same cores that spinning slowed Score-CAM's forwards by 1.7x.
    """
    maps = _maps_and_size(maps, size)
    for axis, n_out in enumerate(size, start=1):
        lower, upper, frac = bilinear_taps(int(n_out), maps.shape[axis])
        frac = frac.reshape([n_out if a == axis else 1 for a in range(maps.ndim)])
        maps = np.take(maps, lower, axis=axis) * (1.0 - frac) + np.take(maps, upper, axis=axis) * frac
    return maps.astype(np.float32)


def _maps_and_size(maps: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """``maps`` as float64 ``(N, *grid)`` with one entry of ``size`` per grid axis (1 to 3), or a ValueError."""
    maps = np.asarray(maps, dtype=np.float64)
    if not 1 <= len(size) <= 3 or maps.ndim != len(size) + 1:
        raise ValueError(
            f"maps must have shape (N, h, w) (or (N, L), (N, d, h, w)) with one output size per grid axis; "
            f"got {maps.ndim}-D shape {maps.shape} and size {tuple(size)}"
        )
    return maps


def normalize(maps: np.ndarray, grid: int = 2) -> np.ndarray:
    """Per map, ``(m - min) / (max - min)`` over the last ``grid`` axes (2: ``(..., H, W)``; 1 for signals, 3 for
    volumes); a flat map becomes zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    if not 1 <= grid <= 3 or maps.ndim < grid:
        raise ValueError(f"maps must have at least {grid} axes (the grid), got shape {maps.shape}")
    axes = tuple(range(-grid, 0))
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    out = np.divide(maps - low, span, out=np.zeros_like(maps), where=span > 0)
    return out.astype(np.float32)


def normalize_signed(maps: np.ndarray, grid: int = 2) -> np.ndarray:
    """Per map, ``m / max |m|`` over the last ``grid`` axes: a signed map in [-1, 1] whose zero stays 0 (a
    min-max normalization would move it); an all-zero map stays zeros."""
    maps = np.asarray(maps, dtype=np.float64)
    if not 1 <= grid <= 3 or maps.ndim < grid:
        raise ValueError(f"maps must have at least {grid} axes (the grid), got shape {maps.shape}")
    peak = np.abs(maps).max(axis=tuple(range(-grid, 0)), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0).astype(np.float32)


UPSAMPLE_MODES = ("bilinear", "nearest", "bicubic")
BICUBIC_A = -0.5


def nearest_taps(n_out: int, n_in: int) -> np.ndarray:
    """The input pixel each output pixel of 1-D nearest-neighbour resizing copies: ``floor((i + 1/2) n_in / n_out)``.

    Half-pixel centres, as ``bilinear_taps``: output pixel ``i`` covers input position ``(i + 1/2) n_in / n_out``
    and takes the input pixel that contains it (Pillow's ``NEAREST``, ``torch`` ``mode="nearest-exact"``,
    ``tf.image.resize(method="nearest")``). ``torch``'s plain ``mode="nearest"`` uses ``floor(i n_in / n_out)``
    instead, which shifts the map by up to half an input pixel towards the top left.
    """
    if n_out < 1 or n_in < 1:
        raise ValueError(f"sizes must be positive, got n_out={n_out}, n_in={n_in}")
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)).astype(np.int64), n_in - 1)


def cubic_kernel(t: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
    """Keys' cubic convolution kernel (Keys, IEEE Trans. ASSP 1981), with ``|t| = d``:

    ``W(d) = (a + 2) d^3 - (a + 3) d^2 + 1`` for ``d <= 1``, ``a d^3 - 5a d^2 + 8a d - 4a`` for ``1 < d < 2``,
    0 beyond. ``a = -0.5`` (Pillow, TensorFlow, JAX, and Keys' own choice) reproduces quadratics exactly.
    """
    d = np.abs(np.asarray(t, dtype=np.float64))
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, np.where(d < 2, far, 0.0))


def bicubic_taps(n_out: int, n_in: int, a: float = BICUBIC_A) -> tuple[np.ndarray, np.ndarray]:
    """The four input neighbours ``(n_out, 4)`` of each output pixel of 1-D bicubic resizing, and their weights.

    Output pixel ``i`` samples the input at ``s = (i + 1/2) n_in / n_out - 1/2`` (half-pixel centres, not
    clamped); its neighbours are ``j = floor(s) - 1 ... floor(s) + 2`` with weights ``W(s - j)``
    (``cubic_kernel``). Neighbours outside the image are left out and the remaining weights divided by their
    sum: Pillow's ``BICUBIC``, ``tf.image.resize(method="bicubic")`` and ``jax.image.resize(..., "cubic")``
    when enlarging. (``torch`` ``mode="bicubic"`` differs: ``a = -0.75``, and it repeats the edge pixel
    instead of leaving the outside out.) A left-out neighbour keeps a valid index with weight 0.
    """
    if n_out < 1 or n_in < 1:
        raise ValueError(f"sizes must be positive, got n_out={n_out}, n_in={n_in}")
    s = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    j = np.floor(s).astype(np.int64)[:, None] + np.arange(-1, 3)
    weights = np.where((j >= 0) & (j < n_in), cubic_kernel(s[:, None] - j, a), 0.0)
    weights /= weights.sum(axis=1, keepdims=True)
    return np.clip(j, 0, n_in - 1), weights


def resize_matrix(n_out: int, n_in: int, mode: str = "bilinear") -> np.ndarray:
    """The ``(n_out, n_in)`` matrix ``R`` of 1-D resizing by ``mode`` (``UPSAMPLE_MODES``): ``R @ v`` resizes ``v``."""
    if mode == "bilinear":
        return bilinear_matrix(n_out, n_in)
    R = np.zeros((n_out, n_in))
    rows = np.arange(n_out)
    if mode == "nearest":
        R[rows, nearest_taps(n_out, n_in)] = 1.0
    elif mode == "bicubic":
        index, weights = bicubic_taps(n_out, n_in)
        np.add.at(R, (np.repeat(rows, 4), index.ravel()), weights.ravel())
    else:
        raise ValueError(f"upsample must be one of {', '.join(UPSAMPLE_MODES)}, got {mode!r}")
    return R


def resize(maps: np.ndarray, size: tuple[int, ...], mode: str = "bilinear") -> np.ndarray:
    """``(N, h, w)`` maps resized to ``(N, H, W)`` by ``mode``: ``R_h @ m @ R_w^T`` per map (``resize_matrix``);
    a grid of one or three axes is resized along each axis in turn, as ``upsample`` does.

    ``"bilinear"`` is ``upsample``; the others are computed one axis after the other with ``np.einsum``, which
    makes no BLAS call (see ``upsample``). ``"nearest"`` copies each map cell into a block (captum's choice for
    Guided Grad-CAM); ``"bicubic"`` (xplique's) is smoother than bilinear and, through the kernel's negative
    lobes, overshoots the map's range near steps; the normalization that follows absorbs that.
    """
    if mode == "bilinear":
        return upsample(maps, size)
    maps = _maps_and_size(maps, size)
    letters = "abc"[: maps.ndim - 1]
    for axis, n_out in enumerate(size, start=1):
        R = resize_matrix(int(n_out), maps.shape[axis], mode)
        source = "n" + letters
        target = source.replace(letters[axis - 1], "z")
        maps = np.einsum(f"z{letters[axis - 1]},{source}->{target}", R, maps)
    return maps.astype(np.float32)
