"""The Grad-CAM family's rules, one function each, in the papers' notation.

``A`` are a layer's activations and ``G = dy^c / dA`` the gradients of the class score, both
``(N, K, h, w)``: N images, K channels, an ``h x w`` grid. ``Z = h * w``. Sums over ``i, j`` run
over the grid, over ``k`` over channels. Every map function returns the raw map ``(N, h, w)``
float32; the math runs in float64.

The grid may have one axis (a signal, ``(N, K, L)``) or three (a volume or a clip, ``(N, K, d, h, w)``)
instead of two: the papers' ``i, j`` then stand for every position of the grid, ``Z`` is the number of
positions, and the maps are ``(N, L)`` or ``(N, d, h, w)``. Each rule is written once for any grid
(``checks.grid_axes``); the docstrings keep the papers' two-axis notation.
"""
from __future__ import annotations

import numpy as np

from gradcam.reference.checks import activations_and_gradients, as_layer_maps, as_maps, grid_axes


def relu(x: np.ndarray) -> np.ndarray:
    """``max(x, 0)``."""
    return np.maximum(x, 0.0)


def weighted_map(A: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``L = ReLU(sum_k w_k A_k)``: the map that every channel-weighting method ends with.

    Parameters
    ----------
    A : (N, K, h, w) activations.
    weights : (N, K) one weight per channel and image.
    """
    A = as_layer_maps(A, "A (activations)")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != A.shape[:2]:
        raise ValueError(f"weights must have shape (N, K) = {A.shape[:2]}, got {weights.shape}")
    return relu(np.einsum("nk,nk...->n...", weights, A)).astype(np.float32)


def channel_contributions(A: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``C_k = w_k A_k``: each channel's part of the weighted sum, ``sum_k C_k = sum_k w_k A_k`` (the map before its
    ReLU), ``(N, K, h, w)`` float32. Positive where channel ``k`` raises the score there, negative where it lowers it.

    Parameters
    ----------
    A : (N, K, h, w) activations.
    weights : (N, K) one weight per channel and image, or (N, K, h, w) one per position (LayerCAM's ``ReLU(G)``,
        HiResCAM's ``G``).
    """
    A = as_layer_maps(A, "A (activations)")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape == A.shape[:2]:
        weights = weights.reshape(*weights.shape, *(1,) * (A.ndim - 2))
    elif weights.shape != A.shape:
        raise ValueError(f"weights must have shape (N, K) = {A.shape[:2]} or that of A {A.shape}, got {weights.shape}")
    return (weights * A).astype(np.float32)


def grad_cam_weights(G: np.ndarray) -> np.ndarray:
    """Grad-CAM channel weights, global average pooling of the gradients (Selvaraju et al., eq. 1).

    ``alpha_k = (1/Z) sum_ij G_kij``. Returns ``(N, K)`` float32.
    """
    return _mean_gradient(as_layer_maps(G, "G (gradients)")).astype(np.float32)


def _mean_gradient(G: np.ndarray) -> np.ndarray:
    Z = int(np.prod(G.shape[2:]))
    return G.sum(axis=grid_axes(G)) / Z


def grad_cam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., eq. 2): ``L = ReLU(sum_k alpha_k A_k)``, ``alpha = grad_cam_weights(G)``."""
    A, G = activations_and_gradients(A, G)
    return weighted_map(A, _mean_gradient(G))


def counterfactual_grad_cam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Counterfactual Grad-CAM (Selvaraju et al., section 5.3): Grad-CAM with ``-G``.

    ``L = ReLU(sum_k alpha_k A_k)`` with ``alpha_k = (1/Z) sum_ij -G_kij``: the regions whose removal would
    raise the model's confidence in the class.
    """
    A, G = activations_and_gradients(A, G)
    return weighted_map(A, _mean_gradient(-G))


def cam(A: np.ndarray, fc_weight: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """CAM (Zhou et al., 2016, eq. 2) for a global-average-pooling + fully-connected head.

    ``M_c = sum_k W_fc[c, k] A_k``, with no ReLU: the map is signed, as the paper defines it (its positive
    places speak for the class, its negative ones against it). For such a head
    ``y^c = sum_k W_ck (1/Z) sum_ij A_kij + b_c``, so ``G_kij = W_ck / Z``, Grad-CAM's ``alpha_k = W_ck / Z``,
    and

        Grad-CAM = ReLU(CAM) / Z

    The two normalized maps are equal only where CAM is nowhere negative; ``normalize`` stretches a signed map
    from its minimum (the strongest evidence against the class, shown as 0) to its maximum (1), so the places
    where CAM is 0 show at ``-min / (max - min)``, not at 0.

    Parameters
    ----------
    A : (N, K, h, w) activations entering the pooling.
    fc_weight : (C, K) the dense layer's weight matrix (classes x channels).
    targets : (N,) the class index per image.

    Returns ``(N, h, w)`` float32, signed.
    """
    A = as_layer_maps(A, "A (activations)")
    fc_weight = np.asarray(fc_weight, dtype=np.float64)
    targets = np.asarray(targets)
    if fc_weight.ndim != 2 or fc_weight.shape[1] != A.shape[1]:
        raise ValueError(
            f"fc_weight must have shape (classes, K) with K = {A.shape[1]} channels, got {fc_weight.shape}"
        )
    if targets.shape != (A.shape[0],):
        raise ValueError(f"targets must have shape (N,) = ({A.shape[0]},), got {targets.shape}")
    W = fc_weight[targets]
    return np.einsum("nk,nk...->n...", W, A).astype(np.float32)


GRAD_CAM_PP_VARIANTS = ("paper", "seed")


def grad_cam_pp_weights(A: np.ndarray, G: np.ndarray, variant: str = "paper") -> np.ndarray:
    """Grad-CAM++ channel weights (Chattopadhyay et al., eq. 19, exponential score).

    With ``Y = exp(S)`` every derivative of ``Y`` is ``exp(S)`` times a power of ``G = dS/dA``:
    ``dY/dA = exp(S) G``, ``d2Y/dA2 = exp(S) G^2``, ``d3Y/dA3 = exp(S) G^3``. In

        a_kij = G_kij^2 / (2 G_kij^2 + S_k G_kij^3) = 1 / (2 + S_k G_kij),    S_k = sum_ab A_kab
        w_k   = sum_ij a_kij ReLU(G_kij)

    the factor ``exp(S)`` cancels, and in ``w`` it only scales every weight alike, so it is left out (no
    overflow). Only positions with ``G > 0`` count (``ReLU(G)``).

    Assumption: ``A >= 0`` (the layer follows a ReLU). Then ``S_k >= 0`` and wherever ``G > 0`` the factor
    ``2 + S_k G`` is at least 2, so ``0 < a <= 1/2``. When activations can be negative (LayerNorm,
    pre-activation layers) ``S_k`` can be negative, and ``2 + S_k G`` vanishes at ``G = -2 / S_k`` (``a`` grows
    without bound near it) and changes sign past it. Rule: ``a = 0`` where the denominator is 0 or negative (no
    epsilon: an absolute epsilon changes the map wherever gradients are small); ``grad_cam_pp_singular`` marks
    the positions where ``a`` would leave ``[0, 1]``, for which the methods warn.

    ``variant="seed"`` is the form of the code quoted in seed 001, whose denominator sums ``A G^3`` over the
    grid, ``a = G_kij^2 / (2 G_kij^2 + sum_ab A_kab G_kab^3)``: not the paper's, kept by name for comparison
    (its denominator can vanish even with ``A >= 0``, where negative gradients make the sum negative).
    Returns ``(N, K)`` float32.
    """
    return _grad_cam_pp_weights(*activations_and_gradients(A, G), variant).astype(np.float32)


def _grad_cam_pp_weights(A: np.ndarray, G: np.ndarray, variant: str) -> np.ndarray:
    G2, G3 = _squared_and_cubed(G)
    a = _alpha(G2, 2.0 * G2 + _third_order_term(A, G3, variant))
    return _grid_sum(a * relu(G))


def _third_order_term(A: np.ndarray, G3: np.ndarray, variant: str) -> np.ndarray:
    """``S_k G_kij^3`` (the paper) or ``sum_ab A_kab G_kab^3`` (seed 001's code)."""
    if variant == "paper":
        return A.sum(axis=grid_axes(A), keepdims=True) * G3
    if variant == "seed":
        return (A * G3).sum(axis=grid_axes(A), keepdims=True)
    raise ValueError(f"unknown Grad-CAM++ variant {variant!r}; variants are {', '.join(GRAD_CAM_PP_VARIANTS)}")


def _grid_sum(x: np.ndarray) -> np.ndarray:
    """``sum_ij x_kij`` per image and channel: ``(N, K, *grid)`` -> ``(N, K)``."""
    return x.sum(axis=grid_axes(x))


def _alpha(D2: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """``a = D2 / denominator`` where the denominator is positive, 0 where it is 0 or negative."""
    return np.divide(D2, denominator, out=np.zeros_like(D2), where=denominator > 0.0)


def grad_cam_pp_singular(A: np.ndarray, G: np.ndarray, variant: str = "paper") -> np.ndarray:
    """Where Grad-CAM++'s ``a`` leaves ``[0, 1]`` at a position that counts: ``(N, K, h, w)`` bool (``A``'s shape).

    A position counts where ``G > 0``. There ``a = G^2 / (2 G^2 + T)`` (``T = S_k G^3``, or ``sum_ab A G^3``
    for the seed variant) exceeds 1, or has no value, exactly where ``G^2 + T < 0``; for the paper's form that
    is ``S_k G < -1``, impossible when ``A >= 0`` (there ``a <= 1/2``).
    """
    A, G = activations_and_gradients(A, G)
    G2, G3 = _squared_and_cubed(G)
    return (G > 0) & (G2 + _third_order_term(A, G3, variant) < 0)


def _squared_and_cubed(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``G^2`` and ``G^3`` by products: NumPy's general power is several times slower than a multiply."""
    G2 = G * G
    return G2, G2 * G


def _pp_weights(S: np.ndarray, D1: np.ndarray, D2: np.ndarray, D3: np.ndarray) -> np.ndarray:
    """``w_k = sum_ij a_kij ReLU(D1_kij)``, ``a = D2 / (2 D2 + S_k D3)``, 0 where the denominator is <= 0."""
    return _grid_sum(_alpha(D2, 2.0 * D2 + S * D3) * relu(D1))


def grad_cam_pp(A: np.ndarray, G: np.ndarray, variant: str = "paper") -> np.ndarray:
    """Grad-CAM++ (Chattopadhyay et al.): ``L = ReLU(sum_k w_k A_k)``, ``w = grad_cam_pp_weights(A, G, variant)``."""
    A, G = activations_and_gradients(A, G)
    return weighted_map(A, _grad_cam_pp_weights(A, G, variant))


def smooth_grad_cam_pp_weights(A: np.ndarray, Gs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Smooth Grad-CAM++ channel weights (Omeiza et al., 2019, Algorithm 1).

    ``Gs`` are the gradients of ``T`` noisy copies ``x + N(0, sigma^2)``, ``ys`` their scores. Under
    ``Y = exp(S)`` the copies' derivatives are averaged with ``e_t = exp(y_t - max_t y_t)``:

        D1 = mean_t e_t G_t,  D2 = mean_t e_t G_t^2,  D3 = mean_t e_t G_t^3
        a = D2 / (2 D2 + S_k D3),  w_k = sum_ij a ReLU(D1)

    Shifting the scores by their maximum multiplies every ``e_t`` by one common factor, which cancels in
    ``a`` and scales ``w`` alike; it keeps ``exp`` from overflowing for large scores.

    Parameters
    ----------
    A : (N, K, h, w) activations of the clean input.
    Gs : (T, N, K, h, w) gradients of the T noisy copies.
    ys : (T, N) the copies' scores.
    """
    return _smooth_pp_weights(A, Gs, ys).astype(np.float32)


def _smooth_pp_weights(A: np.ndarray, Gs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    return _pp_weights(*_smooth_derivatives(A, Gs, ys))


def _smooth_derivatives(
    A: np.ndarray, Gs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``S_k`` and the averaged derivatives ``D1, D2, D3`` of Algorithm 1, float64."""
    A = as_layer_maps(A, "A (activations)")
    Gs = as_layer_maps(Gs, "Gs (gradients of the noisy copies)", leading=3, expected="(T, N, K, *grid)")
    ys = as_maps(ys, "ys (scores of the noisy copies)", "(T, N)", ndim=2)
    if Gs.shape[1:] != A.shape:
        raise ValueError(f"Gs must have shape (T, N, K, *grid) = (T, *{A.shape}), got {Gs.shape}")
    if ys.shape != Gs.shape[:2]:
        raise ValueError(f"ys must have shape (T, N) = {Gs.shape[:2]}, got {ys.shape}")
    e = np.exp(ys - ys.max(axis=0, keepdims=True)).reshape(*ys.shape, *(1,) * (A.ndim - 1))
    Gs2, Gs3 = _squared_and_cubed(Gs)
    D1 = (e * Gs).mean(axis=0)
    D2 = (e * Gs2).mean(axis=0)
    D3 = (e * Gs3).mean(axis=0)
    S = A.sum(axis=grid_axes(A), keepdims=True)
    return S, D1, D2, D3


def smooth_grad_cam_pp_singular(A: np.ndarray, Gs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Where Smooth Grad-CAM++'s ``a = D2 / (2 D2 + S_k D3)`` leaves ``[0, 1]`` at a position that counts
    (``D1 > 0``): ``D2 + S_k D3 < 0``, impossible when ``A >= 0``. ``(N, K, h, w)`` bool
    (``grad_cam_pp_singular`` explains the rule)."""
    S, D1, D2, D3 = _smooth_derivatives(A, Gs, ys)
    return (D1 > 0) & (D2 + S * D3 < 0)


def smooth_grad_cam_pp(A: np.ndarray, Gs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Smooth Grad-CAM++: ``L = ReLU(sum_k w_k A_k)``, ``w = smooth_grad_cam_pp_weights(A, Gs, ys)``."""
    return weighted_map(A, _smooth_pp_weights(A, Gs, ys))


def xgrad_cam_weights(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """XGrad-CAM channel weights (Fu et al., 2020): ``w_k = sum_ij (A_kij / sum_ab A_kab) G_kij``.

    A channel whose activations sum to 0 gets weight 0. Returns ``(N, K)`` float32.
    """
    A, G = activations_and_gradients(A, G)
    return _activation_weighted_gradient(A, G).astype(np.float32)


def _activation_weighted_gradient(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    total = A.sum(axis=grid_axes(A), keepdims=True)
    share = np.divide(A, total, out=np.zeros_like(A), where=total != 0.0)
    return (share * G).sum(axis=grid_axes(A))


def xgrad_cam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """XGrad-CAM: ``L = ReLU(sum_k w_k A_k)``, ``w = xgrad_cam_weights(A, G)``."""
    A, G = activations_and_gradients(A, G)
    return weighted_map(A, _activation_weighted_gradient(A, G))


def layer_cam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """LayerCAM (Jiang et al., 2021): ``L = ReLU(sum_k ReLU(G_k) * A_k)``, elementwise weights."""
    A, G = activations_and_gradients(A, G)
    return relu((relu(G) * A).sum(axis=1)).astype(np.float32)


def hires_cam(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """HiResCAM (Draelos & Carin, 2020): ``L = ReLU(sum_k G_k * A_k)``, elementwise weights."""
    A, G = activations_and_gradients(A, G)
    return relu((G * A).sum(axis=1)).astype(np.float32)


def eigen_cam(A: np.ndarray, centred: bool = False) -> np.ndarray:
    """Eigen-CAM (Muhammad & Yeasin, 2020): the activations projected on their first principal component.

    Per image, ``O = A`` reshaped to ``(Z, K)`` (one row per position), ``O = U S V^T``; the map is
    ``L = ReLU(O v_1)`` reshaped to ``(h, w)``. No gradient is used.

    As in the paper, ``O`` is not centred; ``centred=True`` subtracts each channel's mean over the positions
    first, ``O - mean_ij O``, as pytorch-grad-cam does (its maps then equal these up to the sign below).

    The sign of a singular vector is arbitrary (``-v_1`` is as good as ``v_1``), so it is chosen from the
    projection ``p = O v_1`` alone: the orientation whose positive part carries more of the energy,
    ``sum ReLU(p)^2 >= sum ReLU(-p)^2``; on a tie, the one whose entry of largest ``|p|`` (the first such
    position) is positive. The rule gives ``p`` and ``-p`` the same map, so it does not depend on which sign
    the SVD returned, and the map is all zero only when ``p`` is (a layer whose activations are all zero).
    For non-negative activations (after a ReLU) ``p`` has one sign everywhere, and the rule makes it positive.
    Comparing ``p`` with the mean activation over channels instead, a coin toss where that mean is about 0
    (after LayerNorm or hard-swish), returned all-zero maps on real networks.
    """
    A = as_layer_maps(A, "A (activations)")
    n, k = A.shape[:2]
    maps = np.zeros((n, int(np.prod(A.shape[2:]))))
    for i in range(n):
        O = A[i].reshape(k, -1).T
        if centred:
            O = O - O.mean(axis=0)
        _, _, Vt = np.linalg.svd(O, full_matrices=False)
        maps[i] = oriented(O @ Vt[0])
    return relu(maps).reshape(n, *A.shape[2:]).astype(np.float32)


def oriented(p: np.ndarray) -> np.ndarray:
    """``p`` or ``-p``: the one whose positive part carries more energy, ``sum p|p| > 0``; on a tie, the one
    whose first entry of largest ``|p|`` is positive. ``oriented(-p) == oriented(p)`` exactly.

    The first-component maps share this rule: Eigen-CAM here, Eigen-Grad-CAM and KPCA-CAM in
    ``gradcam.reference.family`` (and ``eigen_smooth`` there, where the plain sum leaves the sign open)."""
    balance = np.sum(p * np.abs(p))
    if balance == 0.0:
        balance = p[np.argmax(np.abs(p))]
    return -p if balance < 0 else p


def guided_grad_cam(guided_gradients: np.ndarray, maps: np.ndarray) -> np.ndarray:
    """Guided Grad-CAM (Selvaraju et al., section 3.1): ``guided backprop * L``, pointwise per colour channel.

    Parameters
    ----------
    guided_gradients : (N, C, H, W) Guided Backprop's input gradients (``(N, C, *grid)`` for any grid).
    maps : (N, H, W) Grad-CAM maps, upsampled to the input size and normalised to [0, 1].
    """
    guided_gradients = as_layer_maps(guided_gradients, "guided_gradients", expected="(N, C, *grid)")
    maps = as_maps(maps, "maps", "(N, *grid)", ndim=guided_gradients.ndim - 1)
    if maps.shape != (guided_gradients.shape[0], *guided_gradients.shape[2:]):
        raise ValueError(
            f"maps must have shape (N, *grid) = {(guided_gradients.shape[0], *guided_gradients.shape[2:])}, "
            f"got {maps.shape}"
        )
    return (guided_gradients * maps[:, None]).astype(np.float32)
