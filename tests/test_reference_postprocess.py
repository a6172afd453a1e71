"""Upsampling, normalisation, localisation and colour."""
import numpy as np
import pytest

from gradcam import reference as ref


def half_pixel_bilinear(m: np.ndarray, H: int, W: int) -> np.ndarray:
    """An independent, pixel-by-pixel statement of bilinear resizing with half-pixel centres."""
    h, w = m.shape
    out = np.empty((H, W))
    for Y in range(H):
        for X in range(W):
            y = min(max((Y + 0.5) * h / H - 0.5, 0), h - 1)
            x = min(max((X + 0.5) * w / W - 0.5, 0), w - 1)
            y0, x0 = int(np.floor(y)), int(np.floor(x))
            y1, x1 = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            fy, fx = y - y0, x - x0
            top = (1 - fx) * m[y0, x0] + fx * m[y0, x1]
            bottom = (1 - fx) * m[y1, x0] + fx * m[y1, x1]
            out[Y, X] = (1 - fy) * top + fy * bottom
    return out


@pytest.mark.parametrize(
    "size_in,size_out", [((7, 7), (32, 32)), ((3, 5), (9, 20)), ((4, 4), (4, 4)), ((1, 3), (5, 6))]
)
def test_upsample_matches_the_pixel_formula(size_in, size_out):
    maps = np.random.default_rng(0).random((2, *size_in))
    out = ref.upsample(maps, size_out)
    assert out.shape == (2, *size_out) and out.dtype == np.float32
    for n in range(2):
        np.testing.assert_allclose(out[n], half_pixel_bilinear(maps[n], *size_out), atol=1e-6)


def test_upsample_two_by_two_by_hand():
    out = ref.upsample(np.array([[[0.0, 1.0], [2.0, 3.0]]]), (4, 4))
    np.testing.assert_allclose(out[0, 0], [0, 0.25, 0.75, 1.0])
    np.testing.assert_allclose(out[0, :, 0], [0, 0.5, 1.5, 2.0])


def test_upsample_is_the_product_with_the_interpolation_matrices():
    maps = np.random.default_rng(1).random((3, 5, 7))
    R_h, R_w = ref.bilinear_matrix(40, 5), ref.bilinear_matrix(24, 7)
    assert np.array_equal(ref.upsample(maps, (40, 24)), (R_h @ maps @ R_w.T).astype(np.float32))
    np.testing.assert_allclose(R_h.sum(axis=1), 1.0)
    lower, upper, frac = ref.bilinear_taps(4, 2)  # samples at -0.25 (clamped), 0.25, 0.75, 1.25 (clamped)
    np.testing.assert_array_equal(lower, [0, 0, 0, 1])
    np.testing.assert_array_equal(upper, [1, 1, 1, 1])
    np.testing.assert_allclose(frac, [0, 0.25, 0.75, 0])


def test_upsample_rejects_wrong_rank():
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        ref.upsample(np.zeros((4, 4)), (8, 8))


def test_normalize_per_map_and_flat_maps():
    maps = np.array([[[1.0, 3.0], [2.0, 5.0]], [[4.0, 4.0], [4.0, 4.0]]])
    out = ref.normalize(maps)
    np.testing.assert_allclose(out[0], [[0, 0.5], [0.25, 1]])
    np.testing.assert_array_equal(out[1], np.zeros((2, 2)))


def test_bounding_box_of_the_largest_segment():
    m = np.zeros((10, 12))
    m[2:5, 3:7] = 1.0  # 12 pixels
    m[7:9, 9:11] = 0.9  # 4 pixels, a smaller segment
    m[0, 0] = 0.1  # below 15% of the max
    assert ref.bounding_box(m) == (3, 2, 7, 5)


def test_bounding_box_joins_diagonal_neighbours_and_respects_threshold():
    m = np.zeros((6, 6))
    m[1, 1] = m[2, 2] = m[3, 3] = 1.0
    assert ref.bounding_box(m) == (1, 1, 4, 4)
    m[4, 4] = 0.2
    assert ref.bounding_box(m, threshold=0.15) == (1, 1, 5, 5)
    assert ref.bounding_box(m, threshold=0.5) == (1, 1, 4, 4)


def test_pointing_game_and_iou():
    m = np.zeros((8, 8))
    m[5, 2] = 1.0
    assert ref.pointing_game_hit(m, (1, 4, 3, 6))
    assert not ref.pointing_game_hit(m, (3, 4, 6, 6))
    assert ref.pointing_game_hit(m, (3, 4, 6, 6), tolerance=1)
    assert ref.box_iou((0, 0, 2, 2), (1, 1, 3, 3)) == pytest.approx(1 / 7)
    assert ref.box_iou((0, 0, 2, 2), (2, 2, 4, 4)) == 0.0
    assert ref.box_iou((0, 0, 4, 4), (0, 0, 4, 4)) == 1.0


def test_colormap_ends_and_overlay():
    jet = ref.colormap(np.array([0.0, 0.5, 1.0]), "jet")
    np.testing.assert_array_equal(jet, [[0, 0, 128], [128, 255, 128], [128, 0, 0]])
    turbo = ref.colormap(np.linspace(0, 1, 5), "turbo")
    # dark at 0, blue-cyan at 1/4, green-yellow at 1/2, red at 1
    assert turbo.dtype == np.uint8 and turbo[0].max() < 60
    assert turbo[1, 2] > turbo[1, 0] and turbo[2, 1] > 200 and turbo[4, 0] > turbo[4, 1] > turbo[4, 2]
    # the polynomial's ends: its constant terms at 0, the sums of its coefficients at 1
    np.testing.assert_array_equal(turbo[0], [35, 23, 27])
    np.testing.assert_array_equal(turbo[4], [144, 13, 0])
    images = np.full((1, 2, 2, 3), 100, np.uint8)
    out = ref.overlay(images, np.ones((1, 2, 2)), alpha=0.5)
    np.testing.assert_array_equal(out[0, 0, 0], [114, 50, 50])  # (100 + 128) / 2, 100 / 2, 100 / 2
    with pytest.raises(ValueError, match="unknown colormap"):
        ref.colormap(np.zeros(2), "rainbow")
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        ref.overlay(images, np.ones((1, 3, 3)))


def test_gradient_image_is_grey_for_constant_and_spreads_detail():
    flat = ref.gradient_image(np.full((1, 3, 2, 2), 7.0))
    np.testing.assert_array_equal(flat, np.full((1, 2, 2, 3), 128))
    g = np.zeros((1, 1, 1, 2))
    g[0, 0, 0] = [-1.0, 1.0]  # mean 0, std 1 -> 0.4 and 0.6
    np.testing.assert_array_equal(ref.gradient_image(g)[0, 0, :, 0], [102, 153])


def test_relu_backward_rules():
    x = np.array([1.0, 1.0, -1.0, -1.0])
    g = np.array([2.0, -2.0, 2.0, -2.0])
    np.testing.assert_array_equal(ref.relu_backward(x, g, "plain"), [2, -2, 0, 0])
    np.testing.assert_array_equal(ref.relu_backward(x, g, "deconvnet"), [2, 0, 2, 0])
    np.testing.assert_array_equal(ref.relu_backward(x, g, "guided"), [2, 0, 0, 0])
