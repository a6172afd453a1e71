"""The reference formulas over a grid of one, two or three axes: signals ``(N, K, L)``, images ``(N, K, h, w)``,
volumes and clips ``(N, K, d, h, w)``. Hand-worked 1-D and 3-D cases (the source documents' 3x3 example laid out
as a signal and stacked in depth), every formula against itself on the same positions arranged as another grid,
and upsampling against torch's linear and trilinear modes.
"""
from __future__ import annotations

import numpy as np
import pytest

from gradcam import reference as ref
from gradcam.reference import family
from gradcam.reference.checks import grid_axes

# seed 000's example: two 3x3 channels, alpha = (1/3, -2/3), L = ReLU(A1 / 3 - 2 A2 / 3)
A1 = np.array([[1, 0, 2], [3, 5, 0], [1, 1, 1]], dtype=np.float64)
A2 = np.array([[0, 1, 0], [3, 1, 0], [1, 0, 1]], dtype=np.float64)
L_EXPECTED = np.array([[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]])
ALPHA = np.array([1 / 3, -2 / 3])


def gradients_of(A: np.ndarray) -> np.ndarray:
    """The gradients of ``y = sum_k alpha_k sum_pos A_k``: ``alpha_k`` at every position."""
    return np.broadcast_to(ALPHA.reshape(1, 2, *(1,) * (A.ndim - 2)), A.shape).copy()


def test_the_3x3_example_as_a_signal_of_nine_positions():
    A = np.stack([A1.ravel(), A2.ravel()])[None]  # (1, 2, 9)
    G = gradients_of(A)
    np.testing.assert_array_equal(ref.grad_cam_weights(G), np.float32([ALPHA]))
    L = ref.grad_cam(A, G)
    assert L.shape == (1, 9) and L.dtype == np.float32
    np.testing.assert_array_equal(L[0], np.float32(L_EXPECTED.ravel()))


def test_the_3x3_example_stacked_in_depth():
    """Depth 2: the example, then the example doubled. Every slice of the map is the 2-D map of that slice."""
    A = np.stack([np.stack([A1, 2 * A1]), np.stack([A2, 2 * A2])])[None]  # (1, 2, 2, 3, 3)
    G = gradients_of(A)
    np.testing.assert_array_equal(ref.grad_cam_weights(G), np.float32([ALPHA]))
    L = ref.grad_cam(A, G)
    assert L.shape == (1, 2, 3, 3)
    np.testing.assert_array_equal(L[0, 0], np.float32(L_EXPECTED))
    np.testing.assert_array_equal(L[0, 1], np.float32(2 * L_EXPECTED))
    # CAM of a head reading these channels with the weights ALPHA * Z: Grad-CAM = ReLU(CAM) / Z, Z = 18 positions
    M = ref.cam(A, (ALPHA * 18)[None], np.array([0]))
    np.testing.assert_allclose(np.maximum(M, 0) / 18, L, rtol=1e-6)


FORMULAS = {
    "grad_cam": ref.grad_cam,
    "counterfactual": ref.counterfactual_grad_cam,
    "grad_cam_pp": ref.grad_cam_pp,
    "grad_cam_pp seed variant": lambda A, G: ref.grad_cam_pp(A, G, "seed"),
    "xgrad_cam": ref.xgrad_cam,
    "layer_cam": ref.layer_cam,
    "hires_cam": ref.hires_cam,
    "eigen_cam": lambda A, G: ref.eigen_cam(A),
    "eigen_cam centred": lambda A, G: ref.eigen_cam(A, centred=True),
    "grad_cam_pp singular": lambda A, G: ref.grad_cam_pp_singular(A - 0.5, G).astype(np.float32),
    "eigen_grad_cam": family.eigen_grad_cam,
    "kpca_cam": lambda A, G: family.kpca_cam(A),
    "fem": lambda A, G: family.fem(A),
    "eigen_smooth": lambda A, G: family.eigen_smooth_map(A, G.reshape(*G.shape[:2], -1)[:, :, 0]),
}


@pytest.mark.parametrize("name", list(FORMULAS))
@pytest.mark.parametrize("grid", [(24,), (2, 3, 4), (4, 6)])
def test_every_formula_depends_on_the_positions_not_on_the_grid_they_form(name, grid):
    """The rules treat the grid's positions as a set (sums, per-position products, a principal component over
    positions): the same 24 positions laid out as a signal, a volume or another image give the same values."""
    rng = np.random.default_rng(7)
    A = rng.random((3, 5, 6, 4))
    G = rng.normal(size=A.shape)
    flat = FORMULAS[name](A, G)
    regridded = FORMULAS[name](A.reshape(3, 5, *grid), G.reshape(3, 5, *grid))
    np.testing.assert_allclose(regridded.reshape(flat.shape), flat, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("grid", [(24,), (2, 3, 4)])
def test_smooth_grad_cam_pp_and_cam_on_other_grids(grid):
    rng = np.random.default_rng(8)
    A, Gs, ys = rng.random((2, 3, 4, 6)), rng.normal(size=(5, 2, 3, 4, 6)), rng.normal(size=(5, 2))
    np.testing.assert_allclose(
        ref.smooth_grad_cam_pp(A.reshape(2, 3, *grid), Gs.reshape(5, 2, 3, *grid), ys).reshape(2, 4, 6),
        ref.smooth_grad_cam_pp(A, Gs, ys), rtol=1e-6,
    )
    W, targets = rng.normal(size=(4, 3)), np.array([1, 3])
    np.testing.assert_allclose(ref.cam(A.reshape(2, 3, *grid), W, targets).reshape(2, 4, 6), ref.cam(A, W, targets),
                               rtol=1e-6)


def test_guided_grad_cam_on_a_volume():
    guided = np.arange(2 * 3 * 2 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2, 2)
    maps = np.full((2, 2, 2, 2), 0.5)
    np.testing.assert_array_equal(ref.guided_grad_cam(guided, maps), np.float32(guided / 2))


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((1, 2, 3, 4, 5, 6))])
def test_a_grid_of_no_axis_or_four_is_refused(bad):
    with pytest.raises(ValueError, match=r"grid of 1 to 3 axes: \(L\), \(h, w\) or \(d, h, w\)"):
        ref.grad_cam(bad, bad)


# --- upsampling and normalization ------------------------------------------------------------------------------


def test_linear_upsampling_of_a_signal_by_hand():
    """Half-pixel centres: output i samples s = (i + 1/2) / 2 - 1/2 = -1/4, 1/4, 3/4, 5/4, clamped to [0, 1]."""
    np.testing.assert_array_equal(ref.upsample(np.array([[0.0, 1.0]]), (4,)), np.float32([[0, 0.25, 0.75, 1]]))


def test_trilinear_upsampling_is_linear_along_each_axis_by_hand():
    """A 2x2x2 volume holding z + 10 y + 100 x, a linear function: trilinear upsampling to 4x4x4 gives it at the
    sampled (clamped) coordinates, 0, 1/4, 3/4, 1 along each axis."""
    z, y, x = np.meshgrid([0.0, 1.0], [0.0, 1.0], [0.0, 1.0], indexing="ij")
    volume = (z + 10 * y + 100 * x)[None]
    s = np.array([0, 0.25, 0.75, 1])
    Z, Y, X = np.meshgrid(s, s, s, indexing="ij")
    np.testing.assert_allclose(ref.upsample(volume, (4, 4, 4))[0], Z + 10 * Y + 100 * X, rtol=1e-6)


@pytest.mark.parametrize("size_in, size_out, mode", [((5,), (17,), "linear"), ((3, 4, 5), (7, 9, 11), "trilinear")])
def test_linear_and_trilinear_upsampling_equal_torch(size_in, size_out, mode):
    torch = pytest.importorskip("torch")
    maps = np.random.default_rng(3).random((2, *size_in))
    theirs = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], size=size_out, mode=mode, align_corners=False
    )[:, 0].numpy()
    np.testing.assert_allclose(ref.upsample(maps, size_out), theirs, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("mode", ["nearest", "bicubic"])
def test_other_modes_resize_each_axis_of_a_volume_in_turn(mode):
    from gradcam.reference.postprocess import resize, resize_matrix

    maps = np.random.default_rng(4).random((2, 3, 4, 5))
    Rd, Rh, Rw = (resize_matrix(n_out, n_in, mode) for n_out, n_in in ((6, 3), (8, 4), (10, 5)))
    expected = np.einsum("Dd,Hh,Ww,ndhw->nDHW", Rd, Rh, Rw, maps)
    np.testing.assert_allclose(resize(maps, (6, 8, 10), mode), expected, rtol=1e-6, atol=1e-7)


def test_size_must_give_one_length_per_grid_axis():
    with pytest.raises(ValueError, match="one output size per grid axis"):
        ref.upsample(np.zeros((1, 3, 3)), (6,))


def test_normalize_over_the_grid_of_each_map():
    maps = np.array([[[0.0, 2.0], [4.0, 8.0]], [[1.0, 1.0], [1.0, 1.0]]])  # (N=2, d=2, L=2) as volumes
    np.testing.assert_array_equal(ref.normalize(maps[:, None], grid=3)[:, 0],
                                  np.float32([[[0, 0.25], [0.5, 1]], [[0, 0], [0, 0]]]))
    np.testing.assert_array_equal(ref.normalize(np.array([[2.0, 4.0, 3.0]]), grid=1), np.float32([[0, 1, 0.5]]))


# --- the 15% box, the pointing game and IoU on signals and volumes ---------------------------------------------


def test_box_of_a_signal_is_x0_x1():
    signal = np.array([0, 0.1, 0.9, 1.0, 0.2, 0, 0.5, 0])
    assert ref.bounding_box(signal, 0.15) == (2, 5)  # 0.9, 1.0, 0.2 >= 0.15; 0.5 alone is the smaller segment


def test_box_of_a_volume_by_hand_with_corner_neighbours():
    volume = np.zeros((4, 5, 6))
    volume[1, 1, 1] = 1.0
    volume[2, 2, 2] = 0.8  # touches the first voxel only at a corner: one segment (26-connectivity)
    volume[3, 4, 5] = 0.9  # apart: a segment of one voxel
    assert ref.bounding_box(volume, 0.15) == (1, 1, 1, 3, 3, 3)  # (x0, y0, z0, x1, y1, z1)


def test_pointing_game_and_iou_in_three_dimensions():
    volume = np.zeros((4, 4, 4))
    volume[3, 1, 2] = 1.0  # z = 3, y = 1, x = 2
    assert ref.pointing_game_hit(volume, (2, 1, 3, 3, 2, 4))
    assert not ref.pointing_game_hit(volume, (2, 1, 0, 3, 2, 3))  # z in [0, 3): the peak's slice is outside
    assert ref.pointing_game_hit(volume, (2, 1, 0, 3, 2, 3), tolerance=1)
    assert ref.box_iou((0, 0, 0, 2, 2, 2), (1, 1, 1, 3, 3, 3)) == pytest.approx(1 / 15)
    assert ref.box_iou((0, 4), (2, 6)) == pytest.approx(2 / 6)
    with pytest.raises(ValueError, match="boxes of different grids"):
        ref.box_iou((0, 4), (0, 0, 2, 2))
    with pytest.raises(ValueError, match="6 numbers, starts then ends"):
        ref.pointing_game_hit(volume, (0, 0, 2, 2))


def test_the_grid_helper_names_the_positions_axes():
    assert grid_axes(np.zeros((1, 2, 3))) == (2,)
    assert grid_axes(np.zeros((1, 2, 3, 4, 5))) == (2, 3, 4)
