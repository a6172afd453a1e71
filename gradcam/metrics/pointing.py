"""The pointing game with recall (Grad-CAM paper, Selvaraju et al., ICCV 2017, section 4.3, after Zhang et al.,
ECCV 2016): maps for the model's top-k predictions, a rejection option for the classes it declares absent, and
precision and recall over (image, class) pairs.

Notation: ``D_nc`` the classifier declares class ``c`` present in image ``n`` (top-k and ``p_nc >= tau``),
``P_nc`` class ``c`` is in image ``n``, ``H_nc`` the maximum of the map for ``c`` lies on an object of class ``c``
(``pointing_game``). Only declared classes are explained; a class that is not there has no object to point at.
"""
from __future__ import annotations

from typing import Any

import numpy as np


def declared_present(probabilities: Any, threshold: float, top: int = 5) -> np.ndarray:
    """``D_nc``: class ``c`` is among image ``n``'s ``min(top, C)`` most probable classes and ``p_nc >= threshold``.

    ``probabilities``: ``(N, C)``. Returns ``(N, C)`` bool. Ties at the k-th place go to the lower class index.
    """
    p = _probabilities(probabilities)
    if not 0 <= threshold <= 1 or int(top) != top or top < 1:
        raise ValueError(f"threshold must lie in [0, 1] and top be an integer >= 1, got {threshold} and {top}")
    k = min(int(top), p.shape[1])
    ranked = np.argsort(-p, axis=1, kind="stable")[:, :k]
    in_top = np.zeros(p.shape, dtype=bool)
    np.put_along_axis(in_top, ranked, True, axis=1)
    return in_top & (p >= threshold)


def pointing_precision_recall(declared: Any, present: Any, hits: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-pair outcomes whose means are the pointing game's precision and recall:

    ``precision = sum_nc D_nc P_nc H_nc / sum_nc D_nc``, ``recall = sum_nc D_nc P_nc H_nc / sum_nc P_nc``.

    All three arguments are ``(N, C)`` bool. Returns ``(hit of each declared pair, found of each present pair)``,
    1-D float arrays of ``sum D`` and ``sum P`` values (empty when there is no such pair). A hit on a class that
    is not present does not count: ``H`` is only defined against objects of that class.
    """
    D, P, H = (np.asarray(a, dtype=bool) for a in (declared, present, hits))
    if not D.shape == P.shape == H.shape or D.ndim != 2:
        raise ValueError(f"declared, present and hits must be (N, C) of one shape, got {D.shape}, {P.shape}, {H.shape}")
    found = D & P & H
    return found[D].astype(np.float64), found[P].astype(np.float64)


def best_rejection_threshold(probabilities: Any, present: Any, thresholds: Any, top: int = 5) -> float:
    """The rejection threshold ``tau`` from ``thresholds`` whose present/absent decisions ``D`` agree best with
    the truth ``P`` on a validation split, by F1 over (image, class) pairs:

    ``F1 = 2 sum D P / (sum D + sum P)``; the lowest threshold among the best (the one that rejects least).
    No map is involved, so the threshold is the same for every method.
    """
    P = np.asarray(present, dtype=bool)
    thresholds = np.sort(np.asarray(thresholds, dtype=np.float64))
    if thresholds.ndim != 1 or thresholds.size == 0:
        raise ValueError("thresholds must be a non-empty 1-D sequence")
    scores = []
    for tau in thresholds:
        D = declared_present(probabilities, float(tau), top)
        if D.shape != P.shape:
            raise ValueError(f"present must be (N, C) = {D.shape}, got {P.shape}")
        total = D.sum() + P.sum()
        scores.append(2 * (D & P).sum() / total if total else 0.0)
    return float(thresholds[int(np.argmax(scores))])


def _probabilities(probabilities: Any) -> np.ndarray:
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or not np.isfinite(p).all() or (p < 0).any():
        raise ValueError(f"probabilities must be a finite, non-negative (N, C) array, got shape {p.shape}")
    return p
