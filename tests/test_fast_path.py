"""The float32 path the methods run (``gradcam.reference.fast``) equals the float64 formulas, the oracle.

Stated tolerances (float32 against float64):

* channel weights and raw maps: within ``RTOL = 1e-5`` of the largest absolute value of the float64 result.
  The float32 sums run over up to a few thousand terms (channels x grid); their rounding stays near 1e-6 of
  the largest term, and 1e-5 leaves a margin of about ten (measured on 2048 channels: 1e-6 and below).
* upsampled, normalised maps: within ``MAPS_ATOL = 1e-5`` absolute, the tolerance of the cross-framework
  tests; they lie exactly in [0, 1], with the maximum exactly 1 (a flat map: all zeros), as the formula's.
* boxes: exactly ``bounding_box`` of the same map. Against the box of the float64 map, each side within
  ``BOX_PIXELS = 1``: a pixel within float32 rounding of the 15% threshold may fall on either side of it.

Each method runs through every backend (torch, tensorflow, jax, where installed) and is compared with the
formula applied to that backend's own probe; the NumPy-only cases cover what small test nets do not reach
(2048 channels, tiny gradients, Grad-CAM++'s zero denominators, flat and NaN maps, ties between segments).
"""
from __future__ import annotations

import numpy as np
import pytest
from backend_kits import FRAMEWORKS, kit_for

import gradcam
from gradcam import reference as ref
from gradcam.reference import fast

RTOL = 1e-5
MAPS_ATOL = 1e-5
BOX_PIXELS = 1


def assert_close_to_largest(actual: np.ndarray, expected: np.ndarray) -> None:
    """``|actual - expected| <= RTOL * max |expected|`` (and the same shape)."""
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= RTOL * max(np.abs(expected).max(), np.finfo(np.float32).tiny)


def assert_maps(maps: np.ndarray, expected: np.ndarray) -> None:
    """Normalised maps: within ``MAPS_ATOL``, in [0, 1], each map's maximum exactly 1 unless it is all zeros."""
    assert maps.dtype == np.float32 and maps.shape == expected.shape
    np.testing.assert_allclose(maps, expected, rtol=0, atol=MAPS_ATOL)
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    peaks = maps.max(axis=(-2, -1))
    assert np.all((peaks == 1.0) | ~maps.any(axis=(-2, -1)))


def assert_boxes(maps: np.ndarray, reference_maps: np.ndarray, threshold: float = 0.15) -> None:
    boxes = fast.bounding_boxes(maps, threshold)
    assert boxes.tolist() == [list(ref.bounding_box(m, threshold)) for m in maps]
    expected = np.array([ref.bounding_box(m, threshold) for m in reference_maps])
    assert np.abs(boxes - expected).max() <= BOX_PIXELS


def layer_probe(rng: np.random.Generator, n: int = 3, k: int = 2048, h: int = 7, w: int = 7, scale: float = 1e-3):
    """Post-ReLU activations and small gradients of both signs, the shape of a ResNet-50's last block."""
    A = np.maximum(rng.normal(size=(n, k, h, w)), 0).astype(np.float32)
    G = (scale * rng.normal(size=(n, k, h, w))).astype(np.float32)
    return A, G


# --- through every backend: the method's result against the formula on that backend's probe ---------------


WEIGHTS = {
    gradcam.GradCAM: lambda A, G: ref.grad_cam_weights(G),
    gradcam.GradCAMPlusPlus: ref.grad_cam_pp_weights,
    gradcam.XGradCAM: ref.xgrad_cam_weights,
}
MAPS = {
    gradcam.GradCAM: ref.grad_cam,
    gradcam.GradCAMPlusPlus: ref.grad_cam_pp,
    gradcam.XGradCAM: ref.xgrad_cam,
    gradcam.LayerCAM: ref.layer_cam,
    gradcam.HiResCAM: ref.hires_cam,
}


@pytest.fixture(params=list(FRAMEWORKS))
def kit(request):
    return kit_for(request.param)


@pytest.mark.parametrize("cls", list(MAPS), ids=lambda cls: cls.__name__)
def test_method_equals_the_float64_formula_through_every_backend(kit, cls):
    cam = cls(kit.cnn, layer=kit.default)
    probe = cam.probe(kit.images(4), None)
    ex = cam.explain_probe(probe)
    (name,) = probe.layers
    A, G = probe.activations[name], probe.gradients[name]
    raw = MAPS[cls](A, G)
    assert_close_to_largest(ex.raw, raw)
    if cls in WEIGHTS:
        assert_close_to_largest(ex.weights, WEIGHTS[cls](A, G))
    expected = ref.normalize(ref.upsample(raw, probe.input_size))
    assert_maps(ex.maps, expected)
    assert_boxes(ex.maps, expected)
    assert ex.boxes() == [tuple(box) for box in fast.bounding_boxes(ex.maps)]


def test_counterfactual_and_several_layers_through_every_backend(kit):
    cam = gradcam.GradCAM(kit.cnn, layer=kit.layers, counterfactual=True)
    probe = cam.probe(kit.images(3), 1)
    ex = cam.explain_probe(probe)
    per_layer = []
    for name in probe.layers:
        raw = ref.counterfactual_grad_cam(probe.activations[name], probe.gradients[name])
        assert_close_to_largest(ex.raw_by_layer[name], raw)
        per_layer.append(ref.normalize(ref.upsample(raw, probe.input_size)))
    assert_maps(ex.maps, ref.normalize(np.mean(per_layer, axis=0)))


# --- the fast formulas on their own ---------------------------------------------------------------------


def test_channel_weights_and_maps_on_2048_channels():
    # 12 images: more than one chunk of the batch (fast._CHUNK_ELEMENTS), the last one partial
    A, G = layer_probe(np.random.default_rng(0), n=12)
    assert len(A) * A[0].size > fast._CHUNK_ELEMENTS
    assert_close_to_largest(fast.grad_cam_weights(G), ref.grad_cam_weights(G))
    assert_close_to_largest(fast.grad_cam_pp_weights(A, G), ref.grad_cam_pp_weights(A, G))
    assert_close_to_largest(fast.xgrad_cam_weights(A, G), ref.xgrad_cam_weights(A, G))
    weights = ref.grad_cam_weights(G)
    assert_close_to_largest(fast.weighted_map(A, weights), ref.weighted_map(A, weights))
    assert_close_to_largest(fast.layer_cam(A, G), ref.layer_cam(A, G))
    assert_close_to_largest(fast.hires_cam(A, G), ref.hires_cam(A, G))


@pytest.mark.parametrize("scale", [1e-12, 1e-20])
def test_grad_cam_pp_keeps_tiny_gradients(scale):
    # in float32, G^2 and G^3 of such gradients underflow; the paper's ratio does not
    A, G = layer_probe(np.random.default_rng(1), k=64, scale=scale)
    assert_close_to_largest(fast.grad_cam_pp_weights(A, G), ref.grad_cam_pp_weights(A, G))


def test_grad_cam_pp_term_is_zero_where_its_denominator_is():
    # channel 0: S = -1 and G = 2 at one position, so 2 G^2 + S G^3 = 0 there; channel 1 is regular
    A = np.zeros((1, 2, 2, 2), np.float32)
    A[0, 0] = [[-1.0, 0.0], [0.0, 0.0]]
    A[0, 1] = [[1.0, 2.0], [0.5, 0.0]]
    G = np.zeros_like(A)
    G[0, 0] = [[2.0, 0.5], [-1.0, 0.0]]
    G[0, 1] = [[0.25, -0.5], [1.0, 3.0]]
    expected = ref.grad_cam_pp_weights(A, G)
    np.testing.assert_allclose(fast.grad_cam_pp_weights(A, G), expected, rtol=RTOL)
    assert expected[0, 0] == pytest.approx(0.5 / (2 - 0.5))  # the pole's term is 0, only G = 0.5 counts


def test_grad_cam_pp_term_is_zero_past_its_pole_and_singular_images_are_found():
    # activations of either sign (no ReLU before the layer): channels with S_k < 0 have 2 + S_k G <= 0 at large
    # gradients, where the rule (gradcam.reference.cams.grad_cam_pp_weights) makes the term 0, not negative
    rng = np.random.default_rng(4)
    A = rng.standard_normal((6, 32, 5, 5)).astype(np.float32)
    G = (rng.standard_normal((6, 32, 5, 5)) * 0.3).astype(np.float32)
    A[0] = np.abs(A[0])  # image 0 as after a ReLU: nothing singular there
    S = A.sum(axis=(2, 3), keepdims=True)
    assert ((G > 0) & (2 + S * G <= 0)).any()  # the case is there
    assert_close_to_largest(fast.grad_cam_pp_weights(A, G), ref.grad_cam_pp_weights(A, G))
    expected = ref.grad_cam_pp_singular(A, G).any(axis=(1, 2, 3))
    assert not expected[0] and expected[1:].all()
    np.testing.assert_array_equal(fast.grad_cam_pp_singular_images(A, G), expected)


def test_grad_cam_pp_dead_channel_and_nan_gradient_as_the_formula():
    # a channel whose activations are all 0 (S = 0, common after a ReLU) weighs sum ReLU(G) / 2; a NaN gradient
    # makes its channel's weight NaN, as in the formula (a maximum that drops NaN would hide it)
    A, G = layer_probe(np.random.default_rng(9), n=2, k=16)
    A[0, 3] = 0.0
    G[1, 5, 2, 2] = np.nan
    weights, expected = fast.grad_cam_pp_weights(A, G), ref.grad_cam_pp_weights(A, G)
    assert weights[0, 3] == pytest.approx(np.maximum(G[0, 3], 0).sum() / 2, rel=1e-6)
    assert np.isnan(weights[1, 5]) and np.isnan(expected[1, 5])
    finite = np.isfinite(expected)
    assert np.isfinite(weights[finite]).all()
    assert_close_to_largest(weights[finite], expected[finite])
    maps = fast.layer_cam(A, G)
    assert np.isnan(maps[1]).any() and np.isnan(ref.layer_cam(A, G)[1]).any()
    assert_close_to_largest(maps[0], ref.layer_cam(A, G)[0])


def test_xgrad_cam_channel_whose_activations_sum_to_zero_gets_weight_zero():
    A, G = layer_probe(np.random.default_rng(2), k=8)
    A[:, 3] = 0.0
    weights = fast.xgrad_cam_weights(A, G)
    assert np.all(weights[:, 3] == 0.0)
    assert_close_to_largest(weights, ref.xgrad_cam_weights(A, G))


def test_shapes_are_checked():
    A, G = layer_probe(np.random.default_rng(3), k=4)
    with pytest.raises(ValueError, match="same shape"):
        fast.layer_cam(A, G[:, :2])
    with pytest.raises(ValueError, match=r"weights must have shape \(N, K\)"):
        fast.weighted_map(A, np.ones((3, 5)))
    with pytest.raises(ValueError, match=r"\(N, h, w\)"):
        fast.upsample_normalized(A, (8, 8))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        fast.bounding_boxes(A)
    with pytest.raises(ValueError, match="threshold"):
        fast.bounding_boxes(A[0], 1.5)


@pytest.mark.parametrize(
    ("grid", "size"),
    [((7, 7), (224, 224)), ((3, 5), (12, 13)), ((7, 7), (7, 7)), ((14, 10), (5, 3)), ((1, 7), (9, 20))],
)
def test_upsample_normalized_equals_normalize_of_upsample(grid, size):
    raw = np.maximum(np.random.default_rng(4).normal(size=(5, *grid)), 0).astype(np.float32)
    raw[1] = 0.0  # flat: zeros
    raw[2] += 1000.0  # far from zero, its range small beside its values
    # the oracle all in float64, with the interpolation matrices (ref.upsample rounds its result to float32,
    # which at values of 1000 is coarser than the fast path)
    R_h, R_w = ref.bilinear_matrix(size[0], grid[0]), ref.bilinear_matrix(size[1], grid[1])
    expected = ref.normalize(np.einsum("Hh,nhw,Ww->nHW", R_h, raw.astype(np.float64), R_w))
    assert_maps(fast.upsample_normalized(raw, size), expected)


def test_upsample_normalized_of_many_images_and_large_sizes():
    raw = np.random.default_rng(5).random((40, 7, 7), dtype=np.float32)
    assert_maps(fast.upsample_normalized(raw, (300, 500)), ref.normalize(ref.upsample(raw, (300, 500))))


def test_normalize_of_the_mean_of_several_layers():
    maps = np.random.default_rng(6).random((2, 4, 9, 9), dtype=np.float32)
    maps[1, 2] = 0.5
    assert_maps(fast.normalize(maps), ref.normalize(maps))


@pytest.mark.parametrize("threshold", [0.15, 0.0, 0.5, 1.0])
def test_boxes_equal_the_per_map_function(threshold):
    rng = np.random.default_rng(7)
    for _ in range(40):
        n, H, W = rng.integers(1, 5), rng.integers(1, 30), rng.integers(1, 30)
        cases = [
            rng.random((n, H, W), dtype=np.float32),  # many small segments
            (rng.random((n, H, W)) > 0.6).astype(np.float32),  # ties between equal-sized segments
            ref.normalize(ref.upsample(np.maximum(rng.normal(size=(n, 3, 4)), 0), (H, W))),  # heat maps
            rng.normal(size=(n, H, W)),  # float64, negative maxima
        ]
        for maps in cases:
            assert fast.bounding_boxes(maps, threshold).tolist() == [
                list(ref.bounding_box(m, threshold)) for m in maps
            ]


def test_boxes_of_a_batch_larger_than_one_chunk():
    raw = np.maximum(np.random.default_rng(8).normal(size=(23, 7, 7)), 0)
    maps = fast.upsample_normalized(raw, (224, 224))
    assert maps.size > fast._CHUNK_ELEMENTS
    assert fast.bounding_boxes(maps).tolist() == [list(ref.bounding_box(m)) for m in maps]


def test_boxes_of_nan_and_flat_maps_are_the_whole_map_as_per_map():
    maps = np.zeros((3, 5, 6), np.float32)
    maps[0] = np.nan
    maps[2, 1:3, 2:4] = 1.0
    assert fast.bounding_boxes(maps).tolist() == [list(ref.bounding_box(m)) for m in maps]


def test_boxes_threshold_float32_maps_exactly_as_float64():
    # 0.15 * max is not a float32: values either side of it by one float32 step go where float64 puts them
    cut = 0.15 * 0.7
    below, above = np.nextafter(np.float32(cut), np.float32(0)), np.nextafter(np.float32(cut), np.float32(1))
    maps = np.zeros((1, 3, 8), np.float32)
    maps[0, 1] = [0.7, below, 0.0, above, 0.0, np.float32(cut), 0.0, 0.0]
    assert fast.bounding_boxes(maps).tolist() == [list(ref.bounding_box(maps[0]))]
