"""Grad-CAM++'s closed form is checked against the derivatives it is derived from, not only against itself."""
import numpy as np
import pytest

from gradcam import reference as ref

N, K, h, w, M = 2, 3, 4, 4, 5


class PiecewiseLinearHead:
    """S(A) = sum_m v_m ReLU(<U_m, A> + b_m): piecewise linear, so d2S/dA2 = 0 away from the kinks."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.U = rng.normal(size=(M, K, h, w)) * 0.05
        self.v = rng.normal(size=M)
        self.b = rng.normal(size=M)

    def score(self, A: np.ndarray) -> float:
        return float(self.v @ np.maximum(np.tensordot(self.U, A, axes=3) + self.b, 0))

    def gradient(self, A: np.ndarray) -> np.ndarray:
        active = (np.tensordot(self.U, A, axes=3) + self.b) > 0
        return np.tensordot(self.v * active, self.U, axes=1)


def directional_derivatives(f, A, index, step):
    """Central finite differences of orders 1, 2 and 3 of f along one coordinate of A."""
    def at(t):
        B = A.copy()
        B[index] += t
        return f(B)

    f2p, f1p, f0, f1m, f2m = at(2 * step), at(step), at(0.0), at(-step), at(-2 * step)
    d1 = (f1p - f1m) / (2 * step)
    d2 = (f1p - 2 * f0 + f1m) / step**2
    d3 = (f2p - 2 * f1p + 2 * f1m - f2m) / (2 * step**3)
    return d1, d2, d3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_closed_form_matches_finite_difference_derivatives_of_exp_score(seed):
    head = PiecewiseLinearHead(seed)
    rng = np.random.default_rng(100 + seed)
    A = rng.random((K, h, w))
    pre = np.tensordot(head.U, A, axes=3) + head.b
    step = 1e-2
    assert np.abs(pre).min() > 4 * step * np.abs(head.U).max(), "a kink lies within the finite-difference stencil"

    def Y(B):
        return np.exp(head.score(B))  # the paper's exponential score
    S_sum = A.sum(axis=(1, 2))
    fd_weights = np.zeros(K)
    for index in np.ndindex(K, h, w):
        d1, d2, d3 = directional_derivatives(Y, A, index, step)
        denominator = 2 * d2 + S_sum[index[0]] * d3
        a = d2 / denominator if abs(denominator) > 1e-12 else 0.0
        fd_weights[index[0]] += a * max(d1, 0.0)

    G = head.gradient(A)
    # The closed form leaves out the common factor exp(S), which only scales every weight alike.
    closed = ref.grad_cam_pp_weights(A[None], G[None])[0] * np.exp(head.score(A))
    np.testing.assert_allclose(closed, fd_weights, rtol=2e-3, atol=1e-6)


def test_derivatives_of_exp_score_are_powers_of_the_gradient():
    head = PiecewiseLinearHead(7)
    A = np.random.default_rng(7).random((K, h, w))
    G = head.gradient(A)
    Y0 = np.exp(head.score(A))
    index = (1, 2, 3)
    d1, d2, d3 = directional_derivatives(lambda B: np.exp(head.score(B)), A, index, 1e-2)
    np.testing.assert_allclose([d1, d2, d3], [Y0 * G[index], Y0 * G[index] ** 2, Y0 * G[index] ** 3], rtol=1e-3)


def test_zero_denominator_gives_zero_alpha_not_nan():
    A = np.ones((1, 2, 2, 2))
    G = np.zeros_like(A)
    G[0, 0, 0, 0] = 1.0
    weights = ref.grad_cam_pp_weights(A, G)
    # channel 0: a = 1 / (2 + 4) at the one non-zero gradient; channel 1: all-zero gradients -> 0
    np.testing.assert_allclose(weights, [[1 / 6, 0.0]], rtol=1e-7)
    assert np.isfinite(ref.grad_cam_pp(A, G)).all()


def test_small_gradients_are_not_distorted_by_an_epsilon():
    """Scaling G to 1e-3 keeps a = G^2 / (2G^2 + S G^3) exact: with an epsilon it would not."""
    rng = np.random.default_rng(3)
    A = rng.random((1, 4, 3, 3))
    G = rng.normal(size=A.shape) * 1e-3
    G2, G3, S = G**2, G**3, A.sum(axis=(2, 3), keepdims=True)
    expected = (G2 / (2 * G2 + S * G3) * np.maximum(G, 0)).sum(axis=(2, 3))
    np.testing.assert_allclose(ref.grad_cam_pp_weights(A, G), expected, rtol=1e-6)


def test_smooth_with_one_clean_copy_equals_grad_cam_pp():
    rng = np.random.default_rng(4)
    A = rng.random((2, 3, 4, 4))
    G = rng.normal(size=A.shape)
    ys = rng.normal(size=(1, 2))
    np.testing.assert_allclose(ref.smooth_grad_cam_pp(A, G[None], ys), ref.grad_cam_pp(A, G), rtol=1e-6)
    np.testing.assert_allclose(
        ref.smooth_grad_cam_pp_weights(A, G[None], ys), ref.grad_cam_pp_weights(A, G), rtol=1e-6
    )


def test_smooth_with_huge_scores_does_not_overflow():
    rng = np.random.default_rng(5)
    A = rng.random((2, 3, 4, 4))
    Gs = rng.normal(size=(6, *A.shape))
    ys = 1e4 + rng.normal(size=(6, 2)) * 10
    L = ref.smooth_grad_cam_pp(A, Gs, ys)
    assert np.isfinite(L).all() and L.max() > 0
    # shifting every score by one constant leaves the weights as they are
    np.testing.assert_allclose(
        ref.smooth_grad_cam_pp_weights(A, Gs, ys), ref.smooth_grad_cam_pp_weights(A, Gs, ys - 1e4), rtol=1e-6
    )


def test_smooth_weights_each_copy_by_its_exp_score():
    A = np.ones((1, 1, 1, 2))
    Gs = np.array([[[[[1.0, 0.0]]]], [[[[0.0, 2.0]]]]])  # two copies
    ys = np.array([[0.0], [np.log(3.0)]])  # e = (1/3, 1) after the shift by the max
    e = np.array([1 / 3, 1.0])
    D1 = (e[:, None] * Gs[:, 0, 0, 0]).mean(0)
    D2 = (e[:, None] * Gs[:, 0, 0, 0] ** 2).mean(0)
    D3 = (e[:, None] * Gs[:, 0, 0, 0] ** 3).mean(0)
    a = D2 / (2 * D2 + 2.0 * D3)
    np.testing.assert_allclose(ref.smooth_grad_cam_pp_weights(A, Gs, ys)[0, 0], (a * D1).sum(), rtol=1e-6)


def test_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(T, N, K, \*grid\)"):
        ref.smooth_grad_cam_pp(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 3)), np.zeros((1, 1)))
    with pytest.raises(ValueError, match=r"\(T, N\)"):
        ref.smooth_grad_cam_pp(np.zeros((1, 2, 3, 3)), np.zeros((4, 1, 2, 3, 3)), np.zeros((3, 1)))
