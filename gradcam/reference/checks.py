"""Shape checks shared by the formula functions: wrong input raises ValueError naming the expected shape."""
from __future__ import annotations

import numpy as np


def as_maps(array: np.ndarray, name: str, expected: str = "(N, K, h, w)", ndim: int = 4) -> np.ndarray:
    """``array`` as float64 with ``ndim`` dimensions, or a ``ValueError`` naming ``expected``."""
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have shape {expected}, got {array.ndim}-D shape {array.shape}")
    return array


def same_shape(A: np.ndarray, G: np.ndarray, names: str = "A and G") -> None:
    """Raise ``ValueError`` unless the activations and gradients have one shape."""
    if A.shape != G.shape:
        raise ValueError(f"{names} must have the same shape (N, K, h, w), got {A.shape} and {G.shape}")


def activations_and_gradients(A: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both as float64 ``(N, K, h, w)`` of one shape."""
    A = as_maps(A, "A (activations)")
    G = as_maps(G, "G (gradients)")
    same_shape(A, G)
    return A, G
