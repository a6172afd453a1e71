"""The rest of the Grad-CAM family (issue 16): Eigen-Grad-CAM, KPCA-CAM, FEM, Finer-CAM and ``eigen_smooth``.

Notation as in ``gradcam.reference.cams``: ``A`` a layer's activations and ``G = dy^c / dA`` the gradients,
both ``(N, K, h, w)``; ``Z = h * w``; sums over ``i, j`` run over the grid, over ``k`` over channels. Per image,
``O`` is ``A`` laid out as ``(Z, K)``: one row per position (a sample), one column per channel (a feature).
Every map function returns ``(N, h, w)`` float32 and computes in float64; as there, the grid may have one to
three axes (``(N, K, L)``, ``(N, K, d, h, w)``), the maps then ``(N, L)`` or ``(N, d, h, w)``.

The first-component maps (Eigen-Grad-CAM, ``eigen_smooth``, KPCA-CAM) orient their projection with Eigen-CAM's
rule (``cams.oriented``; ``eigen_smooth`` first asks the plain sum): the sign a decomposition returns is
arbitrary, so no map depends on it.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg

from gradcam.reference.cams import eigen_cam, grad_cam, oriented, relu
from gradcam.reference.checks import activations_and_gradients, as_layer_maps, as_maps, grid_axes

KERNELS = ("rbf", "poly", "sigmoid", "linear")


def eigen_grad_cam(A: np.ndarray, G: np.ndarray, centred: bool = False) -> np.ndarray:
    """Eigen-Grad-CAM (pytorch-grad-cam's ``EigenGradCAM``): Eigen-CAM of the elementwise product ``A * G``.

    Per image, ``O = (A * G)`` as ``(Z, K)``, ``O = U S V^T``, ``L = ReLU(O v_1)``: the positions' projections
    on the first principal direction of the gradient-weighted activations, oriented as Eigen-CAM's
    (``cams.eigen_cam``, which states the rule). ``centred=True`` subtracts each channel's mean over the
    positions first. pytorch-grad-cam always centres and keeps the sign LAPACK returns; with ``centred=True``
    the two maps are equal wherever LAPACK's sign agrees with the rule, else ours is ``ReLU(-p)`` of its ``p``.
    """
    A, G = activations_and_gradients(A, G)
    return eigen_cam(A * G, centred=centred)


def eigen_smooth_map(A: np.ndarray, weights: np.ndarray, centred: bool = False) -> np.ndarray:
    """``eigen_smooth`` (pytorch-grad-cam's option): the first principal component of the weighted activations.

    A channel-weighting method's map is ``ReLU(s)``, ``s = sum_k w_k A_k``. Smoothed, per image, with ``O`` the
    weighted activations ``w_k A_kij`` as ``(Z, K)`` and ``O = U S V^T``:

        p = O v_1,   oriented so that p . s >= 0,   L = ReLU(p)

    (``centred=True``: ``O`` minus each channel's mean over the positions first, as pytorch-grad-cam does).
    The projection keeps the direction along which the weighted channels vary together and drops the rest.
    Its sign is taken from the plain sum ``s`` rather than from Eigen-CAM's energy rule. In both forms
    ``p . s = S_1^2 (v_1 . 1)``, so the oriented ``p`` is ``(v_1 . 1) p / |v_1 . 1|``: the channel sum of the
    rank-one approximation ``O v_1 v_1^T`` of the weighted activations, up to a positive factor. Evidence
    against the class stays against it: where the first component of ``w_k A_k`` sums to a negative value
    (most of ``s`` negative), the smoothed map is zero there, as Grad-CAM's is; the energy rule would show it
    as evidence for the class. Only where ``p . s = 0`` exactly does Eigen-CAM's rule (``cams.oriented``)
    decide. pytorch-grad-cam keeps the sign LAPACK returns; ``centred=True`` is its map wherever that sign
    agrees with ``s``.

    Parameters
    ----------
    A : (N, K, h, w) activations.
    weights : (N, K) the method's channel weights ``w_k``.
    """
    A = as_layer_maps(A, "A (activations)")
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != A.shape[:2]:
        raise ValueError(f"weights must have shape (N, K) = {A.shape[:2]}, got {weights.shape}")
    n, k = A.shape[:2]
    maps = np.zeros((n, int(np.prod(A.shape[2:]))))
    for i in range(n):
        O = (weights[i].reshape(k, *(1,) * (A.ndim - 2)) * A[i]).reshape(k, -1).T
        s = O.sum(axis=1)
        if centred:
            O = O - O.mean(axis=0)
        _, _, Vt = np.linalg.svd(O, full_matrices=False)
        p = O @ Vt[0]
        agreement = p @ s
        maps[i] = oriented(p) if agreement == 0.0 else np.sign(agreement) * p
    return relu(maps).reshape(n, *A.shape[2:]).astype(np.float32)


def kernel_matrix(X: np.ndarray, kernel: str = "rbf", gamma: float | None = None) -> np.ndarray:
    """The ``(Z, Z)`` kernel matrix of the rows of ``X`` (``(Z, K)``), with scikit-learn's definitions.

    ``rbf``: ``exp(-gamma |x - x'|^2)``; ``poly``: ``(gamma x.x' + 1)^3``; ``sigmoid``: ``tanh(gamma x.x' + 1)``;
    ``linear``: ``x.x'``. ``gamma`` defaults to ``1 / K``, as in scikit-learn.
    """
    if kernel not in KERNELS:
        raise ValueError(f"unknown kernel {kernel!r}; kernels are {', '.join(KERNELS)}")
    X = np.asarray(X, dtype=np.float64)
    gamma = 1.0 / X.shape[1] if gamma is None else float(gamma)
    if not np.isfinite(gamma) or gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0, got {gamma!r}")
    dot = X @ X.T
    if kernel == "linear":
        return dot
    if kernel == "poly":
        return (gamma * dot + 1.0) ** 3
    if kernel == "sigmoid":
        return np.tanh(gamma * dot + 1.0)
    squared = np.diag(dot)
    return np.exp(-gamma * np.maximum(squared[:, None] + squared[None, :] - 2.0 * dot, 0.0))


def kpca_cam(A: np.ndarray, kernel: str = "rbf", gamma: float | None = None) -> np.ndarray:
    """KPCA-CAM (Karmani et al., 2024): the positions' scores on the first kernel principal component.

    Per image, ``X = O - mean_ij O`` (channels centred over the positions, as pytorch-grad-cam's ``KPCA_CAM``
    does; the RBF kernel does not see it), ``K_ab = k(x_a, x_b)`` over the ``Z`` positions, centred in feature
    space (Schoelkopf et al., 1998):

        K~ = K - 1_Z K - K 1_Z + 1_Z K 1_Z,     (1_Z)_ab = 1/Z
        K~ u = lambda u  (the largest eigenvalue, |u| = 1),    p = sqrt(lambda) u,    L = ReLU(p)

    ``p`` is each position's projection on the first component (scikit-learn's ``KernelPCA.fit_transform``,
    which pytorch-grad-cam calls), oriented by Eigen-CAM's rule instead of scikit-learn's sign. With the
    ``linear`` kernel ``p = X v_1``: centred Eigen-CAM. The map is 0 where ``lambda <= 0`` (every position alike).

    Parameters
    ----------
    kernel : ``"rbf"`` (default; pytorch-grad-cam defaults to ``"sigmoid"``), ``"poly"``, ``"sigmoid"`` or
        ``"linear"`` (``kernel_matrix`` defines them).
    gamma : the kernel's coefficient; ``None``: ``1 / K``.
    """
    A = as_layer_maps(A, "A (activations)")
    n, k = A.shape[:2]
    Z = int(np.prod(A.shape[2:]))
    maps = np.zeros((n, Z))
    for i in range(n):
        O = A[i].reshape(k, Z).T
        K = kernel_matrix(O - O.mean(axis=0), kernel, gamma)
        K_centred = K - K.mean(axis=0, keepdims=True) - K.mean(axis=1, keepdims=True) + K.mean()
        # only the largest eigenpair: several times faster than the full decomposition for large Z
        eigenvalues, eigenvectors = scipy.linalg.eigh(K_centred, subset_by_index=[Z - 1, Z - 1])
        lam, u = eigenvalues[0], eigenvectors[:, 0]
        if lam > 0:
            maps[i] = oriented(np.sqrt(lam) * u)
    return relu(maps).reshape(n, *A.shape[2:]).astype(np.float32)


def fem(A: np.ndarray, k: float = 2.0) -> np.ndarray:
    """FEM, the Feature Explanation Method (Fuad et al., IPTA 2020), as xplique's ``FEM`` defines it.

    Per channel, the mean and (population) standard deviation over the positions, a k-sigma threshold, a
    binary mask of the positions at or above it, weighted by the channel's mean:

        mu_k = (1/Z) sum_ij A_kij,   sigma_k = sqrt((1/Z) sum_ij (A_kij - mu_k)^2)
        M_kij = 1 if A_kij >= mu_k + k sigma_k else 0
        L = sum_k mu_k M_k

    No gradient and no class enter: the map is the same for every target. No ReLU is applied (xplique applies
    none; with ``A >= 0`` the map is not negative anywhere). A flat channel (``sigma_k = 0``) has every position
    at its threshold: its mask is all ones, decided from ``max == min`` so that float rounding of the mean
    cannot split it.

    pytorch-grad-cam's ``FEM`` differs: it keeps positions strictly above the threshold, weighs each channel by
    the fraction of its positions kept, and sums ``w_k A_k`` (activations, not masks).

    Parameters
    ----------
    k : how many standard deviations above the mean a position must be (default 2, the paper's).
    """
    A = as_layer_maps(A, "A (activations)")
    k = float(k)
    if not np.isfinite(k):
        raise ValueError(f"k must be a finite number, got {k!r}")
    grid = grid_axes(A)
    mu = A.mean(axis=grid, keepdims=True)
    sigma = A.std(axis=grid, keepdims=True)
    flat = A.max(axis=grid, keepdims=True) == A.min(axis=grid, keepdims=True)
    M = (A >= mu + k * sigma) | flat
    return (mu * M).sum(axis=1).astype(np.float32)


def finer_references(logits: np.ndarray, targets: np.ndarray, references: int) -> tuple[np.ndarray, np.ndarray]:
    """Finer-CAM's comparison classes and their weights (Zhang et al., 2025, as pytorch-grad-cam picks them).

    The ``references`` classes ``d`` other than the target ``c`` whose logits are closest to its logit,
    ``|y_d - y_c|`` ascending (ties: the lower class index first); each weighted by its softmax probability
    renormalised over the chosen ones, ``p~_d = p_d / sum_d' p_d'``, ``p = softmax(y)``.

    Returns ``(N, references)`` int64 classes (the most similar first) and ``(N, references)`` float64 weights.
    """
    logits = as_maps(logits, "logits", "(N, classes)", ndim=2)
    targets = np.asarray(targets, dtype=np.int64)
    n, classes = logits.shape
    if targets.shape != (n,) or ((targets < 0) | (targets >= classes)).any():
        raise ValueError(f"targets must be (N,) = ({n},) class indices in 0..{classes - 1}, got {targets!r}")
    if not 1 <= references < classes:
        raise ValueError(f"references must be between 1 and classes - 1 = {classes - 1}, got {references!r}")
    rows = np.arange(n)
    distance = np.abs(logits - logits[rows, targets][:, None])
    distance[rows, targets] = np.inf  # the target is not its own reference
    chosen = np.argsort(distance, axis=1, kind="stable")[:, :references]
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p_chosen = np.take_along_axis(p, chosen, axis=1)
    return chosen, p_chosen / p_chosen.sum(axis=1, keepdims=True)


def finer_score(logits: np.ndarray, targets: np.ndarray, chosen: np.ndarray, weights: np.ndarray,
                gamma: float = 1.0) -> np.ndarray:
    """Finer-CAM's explained score ``y^c - gamma sum_d p~_d y^d`` per image (``finer_references``), float32."""
    logits = as_maps(logits, "logits", "(N, classes)", ndim=2)
    rows = np.arange(logits.shape[0])
    y_c = logits[rows, np.asarray(targets)]
    return (y_c - gamma * (weights * np.take_along_axis(logits, chosen, axis=1)).sum(axis=1)).astype(np.float32)


def finer_gradient(G: np.ndarray, G_references: np.ndarray, weights: np.ndarray, gamma: float = 1.0) -> np.ndarray:
    """The gradient of Finer-CAM's score ``y^c - gamma sum_d p~_d y^d``, the weights ``p~`` held constant:

        G^F = G^c - gamma sum_d p~_d G^d

    Parameters
    ----------
    G : (N, K, h, w) ``dy^c / dA``.
    G_references : (R, N, K, h, w) ``dy^d / dA`` of each image's ``R`` comparison classes, most similar first.
    weights : (N, R) ``p~_d``.
    """
    G = as_layer_maps(G, "G (gradients)")
    G_references = as_maps(G_references, "G_references", "(R, N, K, *grid)", ndim=G.ndim + 1)
    weights = np.asarray(weights, dtype=np.float64)
    if G_references.shape[1:] != G.shape or weights.shape != (G.shape[0], G_references.shape[0]):
        raise ValueError(
            f"G_references must have shape (R, *{G.shape}) and weights (N, R); got {G_references.shape} and "
            f"{weights.shape}"
        )
    return G - gamma * np.einsum("nr,rnk...->nk...", weights, G_references)


def finer_cam(A: np.ndarray, G: np.ndarray, G_references: np.ndarray, weights: np.ndarray,
              gamma: float = 1.0) -> np.ndarray:
    """Finer-CAM (Zhang et al., CVPR 2025) on Grad-CAM: Grad-CAM of the score ``y^c - gamma sum_d p~_d y^d``.

        alpha_k = (1/Z) sum_ij G^F_kij,   L = ReLU(sum_k alpha_k A_k),   G^F = finer_gradient(G, G_references, ...)

    The score is the paper's ``y^c - gamma y^d`` averaged over the comparison classes with weights ``p~_d``
    (``finer_references``); ``gamma`` is the comparison strength (0: Grad-CAM; 1, the default: the plain
    difference). It is pytorch-grad-cam's ``FinerWeightedTarget`` score, ``sum_d p_d (y^c - gamma y^d) /
    sum_d p_d``, with the same value; its gradient differs in one way: pytorch-grad-cam lets autograd
    differentiate the softmax weights ``p_d`` too, which adds ``sum_d (dp~_d / dA)(y^c - gamma y^d)``. Here the
    weights are held constant, so the map is the linear combination of the classes' Grad-CAM gradients that
    the formula states; with one comparison class ``p~ = 1`` and the two are the same.
    """
    A, G = activations_and_gradients(A, G)
    return grad_cam(A, finer_gradient(G, G_references, weights, gamma))
