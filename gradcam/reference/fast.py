"""The formulas the methods run on every batch, in float32 and a few passes over memory: the throughput path.

Why this module exists: the float64 formulas beside it (``cams``, ``postprocess``, ``localization``) read
like the papers and are the oracle, but they cost about 2.3 ms per image at 224 px (a 2048-channel 7x7
layer), more than a GPU needs for the model itself; at data-set scale the post-processing, not the model,
would set the pace. Every function here computes the same rule as its float64 twin, named in its docstring,
and ``tests/test_fast_path.py`` checks that they agree to float32 precision through every backend.

How, and why each choice:

* float32 throughout: the activations and gradients arrive in float32, and converting a batch to float64
  writes twice their size before any arithmetic starts.
* One pass over the activations and one over the gradients, read from memory; the elementwise steps that
  follow run on a few images at a time (``_chunks``), which stay in the cache between steps.
* Sums with ``np.einsum`` (its own vectorized loops), not BLAS: OpenBLAS's threads spin for a while after
  each call that wakes them, which took the cores from the framework's threads in the next forward (see
  ``postprocess.upsample``). The one BLAS call, in ``upsample_normalized``, is kept too small to wake them.
* ``ReLU(x)`` on large arrays as ``np.maximum(x, zeros)`` against an array of zeros: against the scalar 0
  NumPy's ``maximum`` (which must propagate NaN) ran 3 times slower, not vectorized.
* No product with a per-channel broadcast (``S_k * g``): NumPy runs it as one short loop per 7 x 7 row, three
  times slower than copying ``S_k`` to every position and multiplying two arrays of the same shape.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from gradcam.reference.postprocess import bilinear_taps

# Elements worked on at once (2 MiB of float32): the last-level cache holds a few such blocks between the passes
# over them. Chunks of one 2048 x 7 x 7 image, small enough for a 1 MiB level-2 cache, measured slower: the
# NumPy calls per chunk then weigh more than the cache level gains.
_CHUNK_ELEMENTS = 1 << 19


def _chunks(n: int, per_image: int) -> Iterator[slice]:
    """Consecutive slices of ``n`` images, each of about ``_CHUNK_ELEMENTS`` elements (at least one image)."""
    step = max(1, _CHUNK_ELEMENTS // max(per_image, 1))
    for start in range(0, n, step):
        yield slice(start, min(start + step, n))


def _flat(array: np.ndarray) -> np.ndarray:
    """``(N, K, *grid)`` (a grid of 1 to 3 axes: ``(N, K, h, w)`` for images) as float32 ``(N, K, cells)``, without
    a copy when it already is float32."""
    array = np.asarray(array, dtype=np.float32)
    if not 3 <= array.ndim <= 5:
        raise ValueError(
            f"expected shape (N, K, h, w) (or (N, K, l), (N, K, d, h, w)), got {array.ndim}-D shape {array.shape}"
        )
    return array.reshape(*array.shape[:2], -1)


def _pair(A: np.ndarray, G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    A, G = np.asarray(A), np.asarray(G)
    if A.shape != G.shape:
        raise ValueError(f"A and G must have the same shape (N, K, *grid), got {A.shape} and {G.shape}")
    return _flat(A), _flat(G)


def _chunk_buffer(array: np.ndarray) -> np.ndarray:
    """An empty float32 array for one chunk of ``array``'s images (``_chunks``), reused for every chunk."""
    step = max(1, _CHUNK_ELEMENTS // max(array[0].size, 1))
    return np.empty((min(len(array), step), *array.shape[1:]), np.float32)


def _relu_into(x: np.ndarray, zeros: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``ReLU(x)`` into ``out``, NaN kept; ``zeros`` is ``_zeros_like_one(out)``.

    Against an array ``np.maximum`` runs vectorized; against the scalar 0 it ran 3 times slower.
    """
    return np.maximum(x, zeros, out=out)


def _zeros_like_one(array: np.ndarray) -> np.ndarray:
    """Zeros of one image of ``array`` (``(1, ...)``): broadcast over the images, a row as long as an image."""
    return np.zeros((1, *array.shape[1:]), np.float32)


def weighted_map(A: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``L = ReLU(sum_k w_k A_k)`` (``cams.weighted_map``): ``(N, K, *grid)``, ``(N, K)`` -> ``(N, *grid)``."""
    A = np.asarray(A)
    flat = _flat(A)
    weights = np.asarray(weights, dtype=np.float32)
    if weights.shape != flat.shape[:2]:
        raise ValueError(f"weights must have shape (N, K) = {flat.shape[:2]}, got {weights.shape}")
    maps = np.einsum("nk,nkp->np", weights, flat)
    return np.maximum(maps, 0.0, out=maps).reshape(A.shape[0], *A.shape[2:])


def grad_cam_weights(G: np.ndarray) -> np.ndarray:
    """Grad-CAM's ``alpha_k = (1/Z) sum_ij G_kij`` (``cams.grad_cam_weights``), ``(N, K)``."""
    G = _flat(G)
    alpha = np.einsum("nkp->nk", G)
    alpha /= np.float32(G.shape[2])
    return alpha


def grad_cam_pp_weights(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Grad-CAM++'s ``w_k = sum_ij a_kij ReLU(G_kij)`` (``cams.grad_cam_pp_weights``), ``(N, K)``.

    Where ``ReLU(G) = g > 0``, ``a = G^2 / (2 G^2 + S_k G^3) = 1 / (2 + S_k g)``, so each term is

        g / (2 + S_k g)        (0 where g = 0)

    the same number without the powers, whose float32 values lose precision for ``|G| < 2e-13`` (``G^3``
    leaves the normal range) and vanish below ``1e-15``. Where ``2 + S_k g <= 0`` the term is 0, the rule of
    ``cams.grad_cam_pp_weights``: that needs ``S_k < 0`` (activations of either sign), so only those channels,
    and the rows whose sums came out non-finite, are computed again, in float64. A NaN in ``G`` stays a NaN.

    Per chunk of the gradients: ``g``; ``S_k`` copied to every position, times ``g``, plus 2, in place;
    the quotient; its sum over the grid. (The sums ``S`` take one pass over the activations first.)
    """
    A, G = _pair(A, G)
    S = np.einsum("nkp->nk", A)[:, :, None]
    weights = np.empty(G.shape[:2], np.float32)
    positive, denominator = _chunk_buffer(G), _chunk_buffer(G)
    zeros = _zeros_like_one(G)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for rows in _chunks(len(G), G[0].size):
            n = rows.stop - rows.start
            g, d = _relu_into(G[rows], zeros, positive[:n]), denominator[:n]
            np.copyto(d, S[rows])
            d *= g
            d += np.float32(2.0)
            np.divide(g, d, out=d)
            np.einsum("nkp->nk", d, out=weights[rows])
    again = np.nonzero((S[:, :, 0] < 0) | ~np.isfinite(weights))
    if again[0].size:
        # in float64: near the pole 2 + S_k g is a small difference, whose float32 rounding the quotient magnifies
        g = np.maximum(G[again].astype(np.float64), 0.0)
        d = g * A[again].sum(axis=-1, dtype=np.float64)[:, None] + 2.0
        sums = np.divide(g, d, out=np.zeros_like(d), where=d > 0).sum(axis=-1)
        sums[np.isnan(g).any(axis=-1)] = np.nan
        weights[again] = sums
    return weights


def grad_cam_pp_singular_images(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: the images where some Grad-CAM++ weight ``a = 1 / (2 + S_k G)`` of a position with ``G > 0``
    leaves ``[0, 1]`` (``cams.grad_cam_pp_singular``, the paper's form, any over channels and positions).

    That is ``S_k G < -1``, which needs ``S_k < 0``, and then holds somewhere in the channel exactly when it holds
    at the channel's largest gradient: one pass for the sums, and the maxima of the channels whose sum is negative
    only (a maximum over a 7 x 7 row costs NumPy 4 times a sum, and after a ReLU no sum is negative).
    """
    A, G = _pair(A, G)
    S = np.einsum("nkp->nk", A)
    images, channels = np.nonzero(S < 0)
    singular = np.zeros(len(S), bool)
    with np.errstate(invalid="ignore"):
        past_one = S[images, channels] * G[images, channels].max(axis=-1) < -1
    singular[images[past_one]] = True
    return singular


def xgrad_cam_weights(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """XGrad-CAM's ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij`` (``cams.xgrad_cam_weights``), ``(N, K)``;
    0 for a channel whose activations sum to 0."""
    A, G = _pair(A, G)
    total = np.einsum("nkp->nk", A)
    weighted = np.einsum("nkp,nkp->nk", A, G)
    return np.divide(weighted, total, out=np.zeros_like(weighted), where=total != 0)


def hires_cam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """HiResCAM's ``L = ReLU(sum_k G_k * A_k)`` (``cams.hires_cam``), ``(N, *grid)``."""
    shape = np.shape(A)
    A, G = _pair(A, G)
    maps = np.einsum("nkp,nkp->np", G, A)
    return np.maximum(maps, 0.0, out=maps).reshape(shape[0], *shape[2:])


def layer_cam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """LayerCAM's ``L = ReLU(sum_k ReLU(G_k) * A_k)`` (``cams.layer_cam``), ``(N, *grid)``."""
    shape = np.shape(A)
    A, G = _pair(A, G)
    maps = np.empty((len(G), G.shape[2]), np.float32)
    positive = _chunk_buffer(G)
    zeros = _zeros_like_one(G)
    for rows in _chunks(len(G), G[0].size):
        g = _relu_into(G[rows], zeros, positive[: rows.stop - rows.start])
        np.einsum("nkp,nkp->np", g, A[rows], out=maps[rows])
    return np.maximum(maps, 0.0, out=maps).reshape(shape[0], *shape[2:])


# Rows x columns of one interpolation product at most: OpenBLAS runs a product of m x k x n <= 4 * 65536
# multiply-adds on the calling thread, so no BLAS thread is woken (and none spins afterwards, see the module's
# docstring); with k = 2 this bound keeps every product below it.
_PRODUCT_ELEMENTS = 1 << 16


@lru_cache(maxsize=32)
def _row_groups(n_out: int, n_in: int, width: int) -> tuple[tuple[int, int, int, int], ...]:
    """Output rows of 1-D bilinear resizing that mix the same two input rows, ``(start, stop, lower, upper)``,
    each at most ``_PRODUCT_ELEMENTS / width`` rows long."""
    lower, upper, _ = bilinear_taps(n_out, n_in)
    longest = max(1, _PRODUCT_ELEMENTS // width)
    starts = [i for i in range(n_out) if i == 0 or lower[i] != lower[i - 1] or i % longest == 0]
    stops = [*starts[1:], n_out]
    return tuple((a, b, int(lower[a]), int(upper[a])) for a, b in zip(starts, stops, strict=True))


def upsample_normalized(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``normalize(upsample(maps, size))`` (``postprocess``) in one go: ``(N, h, w)`` -> ``(N, H, W)`` in [0, 1].

    Columns are resized first, on the small maps: ``C`` is ``(N, h, W)``. The rows of each group of output rows
    that mix the same input rows ``lower`` and ``upper`` are then one small product,

        [frac_i, 1] @ [C[upper] - C[lower]; C[lower]]   =   C[lower] + frac_i (C[upper] - C[lower]),

    written straight into the output: each output value is written once, then shifted and scaled in place by
    the minimum and maximum of its map, so the result lies exactly in [0, 1], the maximum on 1; a flat map
    becomes zeros. The products are the only BLAS calls of this module, each too small to wake a BLAS thread.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, h, w), got {maps.ndim}-D shape {maps.shape}")
    H, W = (int(v) for v in size)
    n, h, w = maps.shape
    # Resizing keeps constants and normalising removes them: starting from each map minus its minimum keeps
    # the float32 arithmetic at the scale of the map's range, not of its values (a map at 1000 +- 1).
    maps = maps - maps.min(axis=(1, 2), keepdims=True)
    lower, upper, frac = bilinear_taps(W, w)
    C = np.take(maps, lower, axis=2)  # C order: a fancy index would give columns strided by h * N
    C += frac.astype(np.float32) * (np.take(maps, upper, axis=2) - C)
    row_frac = bilinear_taps(H, h)[2].astype(np.float32)
    products = [
        (np.stack([row_frac[start:stop], np.ones(stop - start, np.float32)], axis=1),
         np.stack([C[:, high] - C[:, low], C[:, low]], axis=1), start, stop)
        for start, stop, low, high in _row_groups(H, h, W)
    ]
    out = np.empty((n, H, W), np.float32)
    step = max(1, _CHUNK_ELEMENTS // (H * W))
    for first in range(0, n, step):
        images = slice(first, first + step)
        block = out[images]
        for weights, rows, start, stop in products:
            np.matmul(weights, rows[images], out=block[:, start:stop])
        flat = block.reshape(len(block), H * W)
        low = flat.min(axis=1, keepdims=True)
        span = flat.max(axis=1, keepdims=True) - low
        span[span == 0] = 1.0  # a flat map: every value is the minimum
        flat -= low
        flat /= span
    return out


def normalize(maps: np.ndarray, grid: int = 2) -> np.ndarray:
    """``(m - min) / (max - min)`` per map over the last ``grid`` axes (``postprocess.normalize``: 2 for images,
    1 for signals, 3 for volumes), float32; a flat map becomes zeros."""
    maps = np.array(maps, dtype=np.float32)
    if not 1 <= grid <= 3 or maps.ndim < grid:
        raise ValueError(f"maps must have at least {grid} axes (the grid), got shape {maps.shape}")
    axes = tuple(range(-grid, 0))
    low = maps.min(axis=axes, keepdims=True)
    span = maps.max(axis=axes, keepdims=True) - low
    span[span == 0] = 1.0
    maps -= low
    maps /= span
    return maps


def _run_edges(maps: np.ndarray, cut: np.ndarray) -> np.ndarray:
    """Where the pixels ``>= cut`` (one threshold per map) start and stop along each row: flat indices into
    ``(N, H, W + 1)``, alternately the first column of a run and one past its last column.

    A few maps at a time, through two buffers reused for every few: a new array of the whole batch's size
    per step cost more in page faults than the comparisons themselves.
    """
    n, H, W = maps.shape
    step = max(1, _CHUNK_ELEMENTS // (H * W))
    padded = np.zeros((min(step, n), H, W + 2), bool)  # columns 0 and W + 1 stay False
    edges = np.empty((min(step, n), H, W + 1), bool)
    found = []
    for first in range(0, n, step):
        count = min(step, n - first)
        np.greater_equal(maps[first : first + count], cut[first : first + count, None, None],
                         out=padded[:count, :, 1:-1])
        np.not_equal(padded[:count, :, 1:], padded[:count, :, :-1], out=edges[:count])
        found.append(np.flatnonzero(edges[:count]) + first * H * (W + 1))
    return np.concatenate(found)


def bounding_boxes(maps: np.ndarray, threshold: float = 0.15) -> np.ndarray:
    """``localization.bounding_box`` of each of ``(N, H, W)`` maps: ``(N, 4)`` int64 rows ``(x0, y0, x1, y1)``.

    The box around the largest 8-connected segment of pixels ``>= threshold * max(map)``, the first in
    row-major order among equal sizes, the whole map when no pixel qualifies (a NaN map), all as the per-map
    function; and float32 maps are thresholded exactly as that function does in float64.

    Labelling every pixel (``scipy.ndimage.label``: 0.4 ms per 224 x 224 map here) costs more than all the
    rest a method does per image. Here the segments come from the runs of each row instead: a thresholded heat
    map has a few runs per row, so its segments are the connected components of a graph with a few nodes per
    row, each run joined to the runs of the row above that touch it (``scipy.sparse.csgraph``), for all maps
    of the batch at once.
    """
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must have shape (N, H, W), got {maps.ndim}-D shape {maps.shape}")
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"threshold must lie in [0, 1], got {threshold}")
    n, H, W = maps.shape
    boxes = np.tile(np.array([0, 0, W, H], np.int64), (n, 1))
    cut = threshold * maps.max(axis=(1, 2)).astype(np.float64)
    if maps.dtype == np.float32:
        # the smallest float32 >= the float64 threshold: x >= it exactly where float64(x) >= the threshold
        low = cut.astype(np.float32)
        cut = np.where(low < cut, np.nextafter(low, np.float32(np.inf)), low)
    else:
        maps = maps.astype(np.float64)
    changes = _run_edges(maps, cut)
    if changes.size == 0:
        return boxes
    # runs: row (n * H + y), first column, one past the last column; in row-major order
    row, first, end = changes[0::2] // (W + 1), changes[0::2] % (W + 1), changes[1::2] % (W + 1)
    count = len(row)
    # runs of the row above that touch run b (8-connected): those with end >= first_b and first <= end_b,
    # a range [above_from, above_to) of the sorted runs
    key = row * (W + 2)
    above_from = np.searchsorted(key + end, key - (W + 2) + first, side="left")
    above_to = np.searchsorted(key + first, key - (W + 2) + end, side="right")
    above_to[row % H == 0] = 0  # the row above belongs to the previous map
    touching = np.flatnonzero(above_to > above_from)
    # run b joins the first run of its range, and the runs of the range join each other
    opened = np.bincount(above_from[touching], minlength=count + 1)
    chained = np.cumsum(opened - np.bincount(above_to[touching] - 1, minlength=count + 1))[:count]
    neighbours = np.flatnonzero(chained > 0)
    graph = coo_matrix(
        (np.ones(len(touching) + len(neighbours), np.int8),
         (np.concatenate([touching, neighbours]), np.concatenate([above_from[touching], neighbours + 1]))),
        shape=(count, count),
    )
    segments, label = connected_components(graph, directed=False)
    size = np.bincount(label, weights=end - first, minlength=segments)
    first_run = np.full(segments, count)
    np.minimum.at(first_run, label, np.arange(count))
    image = row[first_run] // H
    # per image: the largest segment, the earliest among equal sizes
    order = np.lexsort((first_run, -size, image))
    chosen_image, at = np.unique(image[order], return_index=True)
    chosen = np.zeros(segments, bool)
    chosen[order[at]] = True
    runs = np.flatnonzero(chosen[label])
    bounds = np.flatnonzero(np.diff(row[runs] // H, prepend=-1))
    y = row[runs] % H
    boxes[chosen_image] = np.stack(
        [
            np.minimum.reduceat(first[runs], bounds),
            np.minimum.reduceat(y, bounds),
            np.maximum.reduceat(end[runs], bounds),
            np.maximum.reduceat(y, bounds) + 1,
        ],
        axis=1,
    )
    return boxes
