"""FullGrad (Srinivas & Fleuret, NeurIPS 2019, "Full-Gradient Representation for Neural Network Visualization").

A ReLU network with biases is piecewise linear, so on each linear piece its output is exactly

    f(x) = grad_x f . x + sum_l sum_c (grad_{b^l_c} f) b^l_c

(their eq. 2, "completeness"): the input-gradient part and one bias-gradient part per bias ``b^l_c`` of every
layer ``l`` (conv, dense, and batch norm's implicit bias ``beta - gamma mu / sqrt(sigma^2 + eps)`` in inference).
A bias added to channel ``c`` of a layer's output ``O^l`` at every position has the gradient
``sum_ij dy / dO^l_cij``, and its spatial parts ``G^l_cij b^l_c`` with ``G^l = dy / dO^l`` form the bias-gradient
map ``f^b(x)_c`` of that channel. The saliency map (their eq. 5) post-processes each part with ``psi``:

    S(x) = sum_c psi(grad_x f * x)_c + sum_l sum_c psi(G^l_c b^l_c)
    psi(m) = normalize(upsample(|m|)),    normalize(m) = (m - min m) / (max m - min m)  (a flat map: 0)

NumPy only, like every formula in ``gradcam.reference``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gradcam.reference.checks import as_layer_maps
from gradcam.reference.postprocess import normalize, resize

# channels post-processed at once: each one is upsampled to the input's size, so a layer of 2048 channels on a
# 224 x 224 input would otherwise hold 2048 * 224 * 224 float64 values per image at a time
_CHANNELS_AT_ONCE = 32


def bias_gradient(G: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The bias-gradient maps ``f^b(x)_c = G_c * b_c`` of one layer, ``(N, C, *grid)`` (``(N, C, h, w)`` for
    images; a grid of 1 to 3 axes).

    Parameters
    ----------
    G : (N, C, *grid) the gradient of the score at the layer's output, ``dy / dO``.
    b : (C,) the bias added to each output channel (batch norm: its effective bias).
    """
    G = as_layer_maps(G, "G (gradients at the layer's output)", expected="(N, C, *grid)")
    b = np.asarray(b, dtype=np.float64)
    if b.shape != (G.shape[1],):
        raise ValueError(f"the bias must have shape (C,) = ({G.shape[1]},) to match G, got {b.shape}")
    return G * b.reshape(1, -1, *[1] * (G.ndim - 2))


def psi_sum(maps: np.ndarray, size: tuple[int, ...], mode: str = "bilinear") -> np.ndarray:
    """``sum_c psi(m_c)`` with ``psi(m) = normalize(resize(|m|, size, mode))``, each channel on its own,
    ``(N, C, *grid)`` -> ``(N, *size)`` float64 (``(N, C, h, w)`` -> ``(N, H, W)`` for images)."""
    maps = as_layer_maps(maps, "maps", expected="(N, C, *grid)")
    n, channels = maps.shape[:2]
    total = np.zeros((n, *size))
    for first in range(0, channels, _CHANNELS_AT_ONCE):
        chunk = np.abs(maps[:, first : first + _CHANNELS_AT_ONCE])
        flat = chunk.reshape(-1, *chunk.shape[2:])
        upsampled = flat if flat.shape[1:] == tuple(size) else resize(flat, size, mode)
        # each map as (rows, last axis): min and max over these two axes are over the whole grid, of any rank
        as_images = upsampled.reshape(len(flat), -1, size[-1])
        total += normalize(as_images).reshape(n, chunk.shape[1], *size).sum(axis=1)
    return total


def full_grad(
    x: np.ndarray,
    input_gradient: np.ndarray,
    bias_parts: Sequence[tuple[np.ndarray, np.ndarray]],
    mode: str = "bilinear",
) -> np.ndarray:
    """FullGrad's saliency ``S(x) = sum_c psi(grad_x f * x)_c + sum_l sum_c psi(G^l_c b^l_c)``, ``(N, H, W)`` for
    images, ``(N, *grid)`` for a grid of 1 to 3 axes (signals, volumes).

    Parameters
    ----------
    x : (N, C, H, W) the input, channels first (``(N, C, *grid)``).
    input_gradient : (N, C, H, W) ``grad_x f``.
    bias_parts : one ``(G^l, b^l)`` per layer with a bias and a spatial output: ``G^l`` ``(N, C_l, h, w)`` the
        gradient at the layer's output, ``b^l`` ``(C_l,)`` its bias.
    mode : how ``psi`` brings a layer's maps to the input's size (``postprocess.resize``).

    Returns the raw sum (float32); the method normalises it like every map.
    """
    x = as_layer_maps(x, "x (input)", expected="(N, C, H, W) or (N, C, *grid)")
    input_gradient = as_layer_maps(input_gradient, "input_gradient", expected="(N, C, H, W) or (N, C, *grid)")
    if x.shape != input_gradient.shape:
        raise ValueError(f"x and input_gradient must have the same shape, got {x.shape} and {input_gradient.shape}")
    size = x.shape[2:]
    S = psi_sum(input_gradient * x, size, mode)
    for G, b in bias_parts:
        S += psi_sum(bias_gradient(G, b), size, mode)
    return S.astype(np.float32)
