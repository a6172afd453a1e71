"""Shape checks shared by the formula functions: wrong input raises ValueError naming the expected shape.

A layer's activations and gradients are ``(N, K, *grid)``: N images, K channels, and a grid of one to three
axes, ``(L,)`` for a signal, ``(h, w)`` for an image, ``(d, h, w)`` for a volume or a clip. Every formula is
written once over the grid's axes (``grid_axes``), whatever their number.
"""
from __future__ import annotations

import numpy as np

LAYER_SHAPE = "(N, K, *grid) with a grid of 1 to 3 axes: (L), (h, w) or (d, h, w)"
MAX_GRID_AXES = 3


def as_maps(array: np.ndarray, name: str, expected: str = "(N, K, h, w)", ndim: int = 4) -> np.ndarray:
    """``array`` as float64 with ``ndim`` dimensions, or a ``ValueError`` naming ``expected``."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {expected}, got {array.ndim}-D shape {array.shape}")
    return array


def as_layer_maps(array: np.ndarray, name: str, leading: int = 2, expected: str = LAYER_SHAPE) -> np.ndarray:
    """``array`` as float64 with ``leading`` axes (``N, K``; 3 for ``T, N, K``) and a grid of 1 to 3 axes, or a
    ``ValueError`` naming ``expected``."""
    array = np.asarray(array, dtype=np.float64)
    if not leading + 1 <= array.ndim <= leading + MAX_GRID_AXES:
        raise ValueError(f"{name} must have shape {expected}, got {array.ndim}-D shape {array.shape}")
    return array


def grid_axes(array: np.ndarray, leading: int = 2) -> tuple[int, ...]:
    """The axes of the grid of ``(N, K, *grid)`` (after ``leading`` axes): ``(2,)``, ``(2, 3)`` or ``(2, 3, 4)``."""
    return tuple(range(leading, np.ndim(array)))


def same_shape(A: np.ndarray, G: np.ndarray, names: str = "A and G") -> None:
    """Raise ``ValueError`` unless the activations and gradients have one shape."""
    if A.shape != G.shape:
        raise ValueError(f"{names} must have the same shape (N, K, *grid), got {A.shape} and {G.shape}")


def activations_and_gradients(A: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 ``(N, K, *grid)`` of one shape."""
    A = as_layer_maps(A, "A (activations)")
    G = as_layer_maps(G, "G (gradients)")
    same_shape(A, G)
    return A, G
