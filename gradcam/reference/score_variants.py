"""The masks of Score-CAM's two smoothed variants: SS-CAM (noise) and IS-CAM (integration).

Both keep Score-CAM's map ``L = ReLU(sum_k w_k A_k)`` and its masks ``M_k = normalize(upsample(A_k))``; they
score ``N`` changed copies ``M_k^(i)`` of each mask and average: with ``s_c(x) = softmax(f(x))_c``,

    ``w_k = (1/N) sum_{i=1..N} s_c(x * M_k^(i))``.

(With the raw score ``f(x)_c`` instead, the mean goes through a softmax over the channels: torchcam's form,
``softmax_k((1/N) sum_i (f(x * M_k^(i))_c - f(x)_c))``, whose baseline term ``f(x)_c`` is the same for every
channel and cancels in that softmax.) The functions below give the copies ``M_k^(i)``.
"""
from __future__ import annotations

import numpy as np


def ss_cam_masks(M: np.ndarray, delta: np.ndarray, sigma: float) -> np.ndarray:
    """SS-CAM (Wang, Naidu et al., 2020, "SS-CAM: Smoothed Score-CAM for Sharper Visual Feature Localization"),
    noise on the mask: ``M_k^(i) = M_k + sigma * delta_i``, ``delta_i ~ N(0, 1)`` per pixel (torchcam's
    ``SSCAM``, whose default ``sigma`` is 2).

    Parameters
    ----------
    M : (rows, H, W) masks in [0, 1].
    delta : (rows, H, W) standard normal draws, one per mask copy.
    sigma : the noise's standard deviation, in units of the mask's [0, 1] range.
    """
    M, delta = np.asarray(M, dtype=np.float64), np.asarray(delta, dtype=np.float64)
    if M.shape != delta.shape:
        raise ValueError(f"masks and noise must have the same shape, got {M.shape} and {delta.shape}")
    return (M + sigma * delta).astype(np.float32)


def is_cam_coefficients(n: int) -> np.ndarray:
    """IS-CAM (Naidu et al., 2020, "IS-CAM: Integrated Score-CAM for axiomatic-based explanations"): the mask is
    integrated, copy ``i`` being ``M_k^(i) = c_i M_k`` with ``c_i = sum_{j=1..i} j / N`` (``i = 1..N``).

    This is the accumulation ``M <- M + (i/N) M_k`` of torchcam's ``ISCAM`` code (its docstring writes the sum
    from ``j = 0`` to ``i - 1``, one step less than the code runs). ``c_N = (N + 1) / 2``: the last copies scale
    the image past its own brightness.

    Returns
    -------
    (n,) float64: ``c_1 ... c_N``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    return np.cumsum(np.arange(1, n + 1) / n)
