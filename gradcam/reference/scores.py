"""Class scores from a model's outputs: the softmax, and one class's score per row."""
from __future__ import annotations

import numpy as np

SCORES = ("probability", "raw")


def softmax(logits: np.ndarray) -> np.ndarray:
    """``p_c = exp(z_c) / sum_j exp(z_j)`` over the last axis, in float64, shifted by ``max_j z_j`` so that no
    ``exp`` overflows (the shift cancels between numerator and denominator)."""
    z = np.asarray(logits, dtype=np.float64)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def target_scores(logits: np.ndarray, targets: np.ndarray, score: str = "probability") -> np.ndarray:
    """Row ``m``'s score of class ``targets[m]``: ``softmax(z_m)[c]`` (``"probability"``) or ``z_m[c]``
    (``"raw"``), float64 ``(M,)``."""
    if score not in SCORES:
        raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
    values = softmax(logits) if score == "probability" else np.asarray(logits, dtype=np.float64)
    return values[np.arange(len(targets)), targets]
