"""Input-gradient maps: vanilla saliency (Simonyan et al., 2014) and SmoothGrad (Smilkov et al., 2017).

The gradients ``g = d y_c / d x`` arrive channels first, ``(N, C, H, W)`` for one pass or ``(T, N, C, H, W)`` for
``T`` noisy copies of each image, from any backend's ``input_gradient``. Signals ``(N, C, L)`` and volumes
``(N, C, D, H, W)`` are read alike: the maps are then ``(N, L)`` and ``(N, D, H, W)``.
"""
from __future__ import annotations

import numpy as np

from gradcam.reference.checks import as_layer_maps

SMOOTH_GRAD_VARIANTS = ("abs", "signed", "square")


def _gradients(g: np.ndarray, leading: int, grid: int, shape: str) -> np.ndarray:
    """``g`` as float64 with ``leading`` axes before a grid of ``grid`` axes (1 to 3), or a ValueError naming
    ``shape``."""
    g = as_layer_maps(g, "gradients", leading=leading, expected=shape)
    if g.ndim != leading + grid:
        raise ValueError(f"gradients must have shape {shape} with a {grid}-axis grid, got shape {g.shape}")
    return g


def saliency(g: np.ndarray, grid: int = 2) -> np.ndarray:
    """Simonyan et al. 2014, section 3.1: ``M_ij = max_c |g_cij|`` per image, ``g = d y_c / d x``.

    Equals captum's ``Saliency(model).attribute(x, target, abs=True)`` reduced by a maximum over the colour
    channels, and tf-keras-vis's ``Saliency`` with ``keepdims=False`` before its normalization.

    Parameters
    ----------
    g : (N, C, H, W) input gradients (``(N, C, *grid)``).
    grid : the number of the input's grid axes: 2 for images, 1 for signals, 3 for volumes.

    Returns
    -------
    (N, H, W) float32 (``(N, *grid)``).
    """
    g = _gradients(g, 2, grid, "(N, C, H, W)")
    return np.abs(g).max(axis=1).astype(np.float32)


def smooth_grad(g: np.ndarray, variant: str = "abs", grid: int = 2) -> np.ndarray:
    """SmoothGrad (Smilkov et al. 2017, eq. 3): a sensitivity map averaged over ``T`` noisy copies
    ``x + N(0, sigma^2)`` of each image, ``M_hat = (1/T) sum_t M(x + noise_t)``, with ``g_t`` the copies' gradients:

    * ``"abs"``: ``M`` is the saliency map, ``(1/T) sum_t max_c |g_tc|``;
    * ``"signed"``: ``M`` is the signed gradient, averaged first, then the saliency rule:
      ``max_c |(1/T) sum_t g_tc|`` (captum's ``NoiseTunnel(Saliency(model))``, ``nt_type="smoothgrad"``,
      ``abs=False``, then ``abs().amax(1)``);
    * ``"square"``: SmoothGrad-Squared (Hooker et al. 2019), ``max_c (1/T) sum_t g_tc^2`` (captum's
      ``nt_type="smoothgrad_sq"`` then ``amax(1)``).

    captum's ``nt_type="smoothgrad"`` with ``abs=True`` and tf-keras-vis's ``Saliency(..., smooth_samples=T)``
    average ``|g_tc|`` before the maximum over channels, ``max_c (1/T) sum_t |g_tc|``; ``"abs"`` takes the
    maximum first, as the mean of saliency maps. The two agree for one-channel images.

    Parameters
    ----------
    g : (T, N, C, H, W) gradients of the noisy copies (``(T, N, C, *grid)``).
    variant : ``"abs"``, ``"signed"`` or ``"square"``.
    grid : the number of the input's grid axes: 2 for images, 1 for signals, 3 for volumes.

    Returns
    -------
    (N, H, W) float32 (``(N, *grid)``).
    """
    g = _gradients(g, 3, grid, "(T, N, C, H, W)")
    if variant == "abs":
        smoothed = np.abs(g).max(axis=2).mean(axis=0)
    elif variant == "signed":
        smoothed = np.abs(g.mean(axis=0)).max(axis=1)
    elif variant == "square":
        smoothed = (g**2).mean(axis=0).max(axis=1)
    else:
        raise ValueError(f"variant must be one of {', '.join(SMOOTH_GRAD_VARIANTS)}, got {variant!r}")
    return smoothed.astype(np.float32)
