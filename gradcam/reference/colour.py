"""Colour for heat maps: colormaps, overlays, and displayable pictures of input gradients."""
from __future__ import annotations

import numpy as np

# Turbo (Mikhailov, Google 2019) in its published polynomial approximation (Ruofei Du, Apache-2.0):
# coefficients of 1, x, ..., x^5 for red, green and blue. Close to the LUT except near x = 0.
_TURBO = np.array(
    [
        [0.13572138, 4.61539260, -42.66032258, 132.13108234, -152.94239396, 59.28637943],
        [0.09140261, 2.19418839, 4.84296658, -14.18503333, 4.27729857, 2.82956604],
        [0.10667330, 12.64194608, -60.58204836, 110.36276771, -89.90310912, 27.34824973],
    ]
)


def _jet(x: np.ndarray) -> np.ndarray:
    """MATLAB's jet as three clipped triangles: blue, cyan, yellow, red as ``x`` goes 0 -> 1."""
    centres = np.array([3.0, 2.0, 1.0])  # red, green, blue peak at x = 3/4, 1/2, 1/4
    return np.clip(1.5 - np.abs(4.0 * x[..., None] - centres), 0.0, 1.0)


def _turbo(x: np.ndarray) -> np.ndarray:
    # Horner's rule on the three polynomials at once (no matrix product: no BLAS threads, see upsample)
    x = x[..., None]
    value = np.broadcast_to(_TURBO[:, 5], x.shape[:-1] + (3,))
    for power in range(4, -1, -1):
        value = value * x + _TURBO[:, power]
    return np.clip(value, 0.0, 1.0)


COLORMAPS = {"jet": _jet, "turbo": _turbo}


def colormap(maps: np.ndarray, name: str = "jet") -> np.ndarray:
    """Colour maps with values in [0, 1] (any shape ``S``) as ``S + (3,)`` uint8 RGB.

    ``jet`` is the classic rainbow of the Grad-CAM papers; ``turbo`` is its perceptually smoother
    successor. Values outside [0, 1] are clipped.
    """
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; choose one of {', '.join(COLORMAPS)}")
    x = np.clip(np.asarray(maps, dtype=np.float64), 0.0, 1.0)
    return np.round(COLORMAPS[name](x) * 255.0).astype(np.uint8)


def _as_unit_rgb(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must have shape (N, H, W, 3) or (N, H, W, 1), got {images.shape}")
    if images.dtype == np.uint8:
        unit = images / 255.0
    else:
        unit = np.clip(images.astype(np.float64), 0.0, 1.0)
    return np.repeat(unit, 3, axis=-1) if unit.shape[-1] == 1 else unit


def overlay(images: np.ndarray, maps: np.ndarray, alpha: float = 0.5, name: str = "jet") -> np.ndarray:
    """``(1 - alpha) * image + alpha * colormap(map)`` as ``(N, H, W, 3)`` uint8.

    ``images`` are ``(N, H, W, 3|1)`` uint8 or floats in [0, 1]; ``maps`` ``(N, H, W)`` in [0, 1].
    """
    unit = _as_unit_rgb(images)
    maps = np.asarray(maps)
    if maps.shape != unit.shape[:3]:
        raise ValueError(f"maps must have shape (N, H, W) = {unit.shape[:3]}, got {maps.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    heat = colormap(maps, name) / 255.0
    return np.round(((1.0 - alpha) * unit + alpha * heat) * 255.0).astype(np.uint8)


def gradient_image(gradients: np.ndarray) -> np.ndarray:
    """Input gradients ``(N, C, H, W)`` as displayable ``(N, H, W, C)`` uint8 pictures.

    Per image, ``0.5 + 0.1 * (g - mean) / std`` clipped to [0, 1] (the Grad-CAM authors' display rule):
    zero-mean detail around mid-grey, three standard deviations to either end. A constant gradient is grey.
    """
    g = np.asarray(gradients, dtype=np.float64)
    if g.ndim != 4:
        raise ValueError(f"gradients must have shape (N, C, H, W), got {g.ndim}-D shape {g.shape}")
    centred = g - g.mean(axis=(1, 2, 3), keepdims=True)
    std = g.std(axis=(1, 2, 3), keepdims=True)
    scaled = np.divide(centred, std, out=np.zeros_like(g), where=std > 0)
    picture = np.clip(0.5 + 0.1 * scaled, 0.0, 1.0)
    return np.round(picture.transpose(0, 2, 3, 1) * 255.0).astype(np.uint8)
