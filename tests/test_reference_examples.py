"""The hand-worked examples of the source documents, and CAM's relation to Grad-CAM, checked exactly."""
from fractions import Fraction

import numpy as np
import pytest

from gradcam import reference as ref

A1 = [[1, 0, 2], [3, 5, 0], [1, 1, 1]]
A2 = [[0, 1, 0], [3, 1, 0], [1, 0, 1]]
L_EXPECTED = [[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]]


def seed000_arrays():
    """A = (A1, A2) and the gradients of y = sum_k alpha_k sum_ij A_kij, which are alpha_k everywhere."""
    A = np.array([[A1, A2]], dtype=np.float64)
    G = np.empty_like(A)
    G[0, 0] = 1 / 3
    G[0, 1] = -2 / 3
    return A, G


def test_seed000_weights_are_one_third_and_minus_two_thirds():
    _, G = seed000_arrays()
    np.testing.assert_array_equal(ref.grad_cam_weights(G), np.float32([[1 / 3, -2 / 3]]))


def test_seed000_map_exactly():
    A, G = seed000_arrays()
    L = ref.grad_cam(A, G)
    assert L.dtype == np.float32 and L.shape == (1, 3, 3)
    np.testing.assert_array_equal(L[0], np.float32(L_EXPECTED))
    as_fractions = [[Fraction(float(v)).limit_denominator(10) for v in row] for row in L[0]]
    assert as_fractions == [[Fraction(1, 3), 0, Fraction(2, 3)], [0, 1, 0], [0, Fraction(1, 3), 0]]


def test_seed000_counterfactual_is_the_negative_part():
    A, G = seed000_arrays()
    expected = np.maximum(-(np.array(A1) / 3 - 2 * np.array(A2) / 3), 0)
    np.testing.assert_array_equal(ref.counterfactual_grad_cam(A, G)[0], np.float32(expected))


def test_seed000_second_example_two_by_two():
    """y1 = O11 W11 + O12 W12 + O21 W13 + O22 W14 with W = (0, 1, 0, 1): dy1/dO = [[0,1],[0,1]], alpha = 1/2."""
    W = np.array([0.0, 1.0, 0.0, 1.0])
    O = np.array([[2.0, 3.0], [5.0, 7.0]])
    dy_dO = W.reshape(2, 2)
    np.testing.assert_array_equal(dy_dO, [[0, 1], [0, 1]])
    assert float(O.ravel() @ W) == 3.0 + 7.0
    alpha = ref.grad_cam_weights(dy_dO[None, None])
    assert alpha.shape == (1, 1) and alpha[0, 0] == np.float32(0.5)
    np.testing.assert_array_equal(ref.grad_cam(O[None, None], dy_dO[None, None])[0], np.float32(O / 2))


def test_cam_is_z_times_grad_cam_for_gap_fc_head():
    rng = np.random.default_rng(0)
    N, K, h, w, C = 3, 6, 5, 4, 7
    A = rng.random((N, K, h, w))
    W_fc = rng.normal(size=(C, K))
    targets = np.array([0, 3, 6])
    # y_c = sum_k W_ck (1/Z) sum_ij A_kij + b_c, so dy_c/dA_kij = W_ck / Z everywhere.
    Z = h * w
    G = np.broadcast_to((W_fc[targets] / Z)[:, :, None, None], A.shape)
    # CAM (Zhou et al., eq. 2) has no ReLU: Grad-CAM = ReLU(CAM) / Z, and CAM keeps the negative places
    cam = ref.cam(A, W_fc, targets)
    np.testing.assert_allclose(ref.relu(cam) / Z, ref.grad_cam(A, G), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(cam, np.einsum("nk,nkij->nij", W_fc[targets], A), rtol=1e-6)
    assert cam.min() < 0


def test_cam_checks_fc_weight_shape():
    with pytest.raises(ValueError, match=r"\(classes, K\) with K = 6"):
        ref.cam(np.zeros((1, 6, 2, 2)), np.zeros((3, 5)), np.array([0]))


def test_guided_grad_cam_is_pointwise_per_channel():
    g = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    maps = np.array([[[0, 1], [0.5, 0]], [[1, 1], [0, 0]]])
    out = ref.guided_grad_cam(g, maps)
    np.testing.assert_array_equal(out, np.float32(g * maps[:, None]))
