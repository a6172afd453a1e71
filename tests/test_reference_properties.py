"""Properties every map rule keeps, over random activations and gradients (hypothesis)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradcam import reference as ref

GRADIENT_RULES = {
    "grad_cam": ref.grad_cam,
    "counterfactual_grad_cam": ref.counterfactual_grad_cam,
    "grad_cam_pp": ref.grad_cam_pp,
    "xgrad_cam": ref.xgrad_cam,
    "layer_cam": ref.layer_cam,
    "hires_cam": ref.hires_cam,
}
# Grad-CAM++ mixes G^2 and G^3 in one denominator, so its normalised map depends on the scale of G.
SCALE_INVARIANT = ["grad_cam", "counterfactual_grad_cam", "xgrad_cam", "layer_cam", "hires_cam"]

# Zero or well inside float32's normal range: a product with the scale must not underflow in the float32 map.
magnitude = st.one_of(st.just(0.0), st.floats(1e-3, 10))
signed = st.builds(lambda m, negative: -m if negative else m, magnitude, st.booleans())


@st.composite
def activations_and_gradients(draw):
    shape = draw(st.tuples(st.integers(1, 3), st.integers(1, 4), st.integers(1, 5), st.integers(1, 5)))
    A = draw(arrays(np.float64, shape, elements=magnitude))  # post-ReLU activations
    G = draw(arrays(np.float64, shape, elements=signed))
    return A, G


@pytest.mark.parametrize("name", GRADIENT_RULES)
@settings(max_examples=40, deadline=None)
@given(data=activations_and_gradients())
def test_maps_have_shape_n_h_w_are_finite_and_non_negative(name, data):
    A, G = data
    L = GRADIENT_RULES[name](A, G)
    assert L.shape == (A.shape[0], A.shape[2], A.shape[3]) and L.dtype == np.float32
    assert np.isfinite(L).all() and (L >= 0).all()
    normalized = ref.normalize(L)
    assert (normalized >= 0).all() and (normalized <= 1).all()


@pytest.mark.parametrize("name", SCALE_INVARIANT)
@settings(max_examples=40, deadline=None)
@given(data=activations_and_gradients(), scale=st.floats(1e-3, 1e3))
def test_normalized_map_ignores_a_positive_scaling_of_the_gradients(name, data, scale):
    A, G = data
    rule = GRADIENT_RULES[name]
    np.testing.assert_allclose(ref.normalize(rule(A, G * scale)), ref.normalize(rule(A, G)), atol=2e-4)


@pytest.mark.parametrize("name", [*GRADIENT_RULES, "eigen_cam"])
@settings(max_examples=30, deadline=None)
@given(data=activations_and_gradients(), seed=st.integers(0, 2**16))
def test_map_ignores_the_order_of_channels(name, data, seed):
    A, G = data
    order = np.random.default_rng(seed).permutation(A.shape[1])
    if name == "eigen_cam":
        # the first principal component is only defined when the top singular value is unique
        for image in A:
            sv = np.linalg.svd(image.reshape(image.shape[0], -1), compute_uv=False)
            assume(len(sv) < 2 or sv[0] - sv[1] > 1e-3 * sv[0])
        before, after = ref.eigen_cam(A), ref.eigen_cam(A[:, order])
    else:
        before, after = GRADIENT_RULES[name](A, G), GRADIENT_RULES[name](A[:, order], G[:, order])
    np.testing.assert_allclose(after, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", GRADIENT_RULES)
def test_all_zero_gradients_give_an_all_zero_map(name):
    A = np.random.default_rng(0).random((2, 3, 4, 5))
    L = GRADIENT_RULES[name](A, np.zeros_like(A))
    np.testing.assert_array_equal(L, np.zeros((2, 4, 5), np.float32))
    np.testing.assert_array_equal(ref.normalize(L), np.zeros((2, 4, 5), np.float32))


def test_eigen_cam_is_the_projection_on_the_first_singular_vector():
    rng = np.random.default_rng(1)
    direction = rng.random(5)  # every position's channel vector is a multiple of one direction
    strength = rng.random((3, 4))
    A = (direction[:, None, None] * strength[None])[None]
    # a rank-one O = strength x direction: the projection is |direction| * strength
    np.testing.assert_allclose(ref.eigen_cam(A)[0], np.linalg.norm(direction) * strength, rtol=1e-5)
    # the sign of a singular vector is arbitrary: the pole carrying the energy is kept, so -A gives the same map
    np.testing.assert_allclose(ref.eigen_cam(-A)[0], np.linalg.norm(direction) * strength, rtol=1e-5)


def test_layer_and_hires_cam_weight_each_position():
    A = np.array([[[[1.0, 2.0]], [[3.0, 1.0]]]])
    G = np.array([[[[1.0, -1.0]], [[-2.0, 2.0]]]])
    np.testing.assert_array_equal(ref.layer_cam(A, G), np.float32([[[1.0, 2.0]]]))  # ReLU(G) A summed
    np.testing.assert_array_equal(ref.hires_cam(A, G), np.float32([[[0.0, 0.0]]]))  # (1-6, -2+2)


def test_xgrad_cam_weights_by_activation_share():
    A = np.array([[[[1.0, 3.0]]]])
    G = np.array([[[[2.0, 4.0]]]])
    np.testing.assert_allclose(ref.xgrad_cam_weights(A, G), [[1 / 4 * 2 + 3 / 4 * 4]])


@pytest.mark.parametrize("bad", [np.zeros((2, 3)), np.zeros((1, 2, 3, 4, 5, 6))])
def test_wrong_rank_names_the_expected_shape(bad):
    """A grid of one to three axes is a signal, an image or a volume; none or four is refused."""
    with pytest.raises(ValueError, match=r"\(N, K, \*grid\) with a grid of 1 to 3 axes"):
        ref.grad_cam(bad, bad)


def test_mismatched_shapes_are_refused():
    with pytest.raises(ValueError, match="same shape"):
        ref.grad_cam(np.zeros((1, 2, 3, 3)), np.zeros((1, 2, 3, 4)))
