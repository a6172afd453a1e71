"""Unrectified outputs (issue 15): ``relu=False`` keeps the map signed, ``contributions=True`` keeps each channel's
``C_k`` (``w_k A_k``; ``ReLU(G_k) A_k`` for LayerCAM, ``G_k A_k`` for HiResCAM); by hand, against the float64
reference on the layer's own ``A`` and ``G``, and the same in the three frameworks."""
import numpy as np
import pytest
from backend_kits import embedded_net_everywhere

import gradcam
from gradcam import reference as ref
from gradcam.reference import postprocess

LAYER = "block3"  # a residual block's output: both signs of sum_k w_k A_k occur there on random weights


def test_signed_normalization_and_contributions_by_hand():
    maps = np.array([[[-2.0, 1.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 0.0]], [[-3.0, -1.0], [0.0, -1.5]]])
    np.testing.assert_allclose(
        postprocess.normalize_signed(maps),
        [[[-0.5, 0.25], [0, 1]], [[0, 0], [0, 0]], [[-1, -1 / 3], [0, -0.5]]],
        rtol=1e-7,  # float32 output
    )
    A = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2)  # channel 0: 0..3, channel 1: 4..7
    C = ref.channel_contributions(A, np.array([[2.0, -1.0]]))
    np.testing.assert_array_equal(C, [[[[0, 2], [4, 6]], [[-4, -5], [-6, -7]]]])
    np.testing.assert_array_equal(C.sum(axis=1), [[[-4, -3], [-2, -1]]])  # all negative: ReLU gives zeros
    per_position = ref.channel_contributions(A, -A)
    np.testing.assert_array_equal(per_position, -(A**2))
    with pytest.raises(ValueError, match="weights must have shape"):
        ref.channel_contributions(A, np.ones((1, 3)))


@pytest.fixture(scope="module")
def torch_net():
    model, x = embedded_net_everywhere(weights_seed=11, input_seed=6)["torch"]
    return model, x


@pytest.mark.parametrize(
    "method, weights_of, signs",
    [
        (gradcam.GradCAM, lambda A, G: ref.grad_cam_weights(G), "both"),
        (gradcam.XGradCAM, lambda A, G: ref.xgrad_cam_weights(A, G), "both"),
        (gradcam.HiResCAM, lambda A, G: G, "both"),
        # weights >= 0 on activations >= 0 (after a ReLU): the sum cannot be negative, the ReLU changes nothing
        (gradcam.GradCAMPlusPlus, lambda A, G: ref.grad_cam_pp_weights(A, G), "non-negative"),
        (gradcam.LayerCAM, lambda A, G: ref.relu(G), "non-negative"),
    ],
)
def test_signed_maps_and_contributions_equal_the_reference(torch_net, method, weights_of, signs):
    model, x = torch_net
    probe = gradcam.activations_and_gradients(model, x, LAYER, target=[0, 2])
    A, G = probe.activations[LAYER].astype(np.float64), probe.gradients[LAYER].astype(np.float64)
    C = ref.channel_contributions(A, weights_of(A, G))
    signed = method(model, LAYER, relu=False, contributions=True)(x, target=[0, 2])
    rectified = method(model, LAYER)(x, target=[0, 2])
    # float32 against float64: the sums run over 64 channels of values about 1
    np.testing.assert_allclose(signed.contributions, C, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(signed.raw, C.sum(axis=1), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(rectified.raw, ref.relu(signed.raw), rtol=1e-4, atol=1e-5)
    expected = postprocess.normalize_signed(postprocess.upsample(C.sum(axis=1), (64, 64)))
    np.testing.assert_allclose(signed.maps, expected, atol=1e-5)
    assert np.abs(signed.maps).max(axis=(1, 2)) == pytest.approx(1.0)
    if signs == "both":  # each image's map has both signs: the case is not degenerate
        assert all(raw.min() < 0 < raw.max() for raw in signed.raw)
    else:
        assert signed.raw.min() >= 0


def test_score_cam_and_ablation_cam_contributions_are_their_weights_times_a(torch_net):
    model, x = torch_net
    for method in (gradcam.ScoreCAM, gradcam.AblationCAM):
        ex = method(model, LAYER, relu=False, contributions=True, batch_size=64, quiet=True)(x)
        A = gradcam.activations_and_gradients(model, x, LAYER).activations[LAYER].astype(np.float64)
        np.testing.assert_allclose(ex.contributions, ref.channel_contributions(A, ex.weights), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ex.raw, ex.contributions.sum(axis=1), rtol=1e-4, atol=1e-5)


def test_the_three_frameworks_give_the_same_signed_map():
    nets = embedded_net_everywhere(weights_seed=11, input_seed=6)
    maps = {
        name: gradcam.GradCAM(model, LAYER, relu=False, contributions=True)(x, target=[0, 2])
        for name, (model, x) in nets.items()
    }
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(maps[name].maps, maps["torch"].maps, atol=1e-5)
        np.testing.assert_allclose(maps[name].contributions, maps["torch"].contributions, rtol=1e-4, atol=1e-6)


def test_refusals(torch_net):
    model, x = torch_net
    with pytest.raises(ValueError, match="not a ReLU of per-channel contributions"):
        gradcam.EigenCAM(model, LAYER, relu=False)
    with pytest.raises(ValueError, match="not a ReLU of per-channel contributions"):
        gradcam.EigenGradCAM(model, LAYER, contributions=True)
    with pytest.raises(ValueError, match="no relu=False form"):
        gradcam.GradCAM(model, LAYER, relu=False, eigen_smooth=True)
    with pytest.raises(ValueError, match="True or False"):
        gradcam.GradCAM(model, LAYER, relu="no")
    with pytest.raises(ValueError, match="contributions=True"):
        _ = gradcam.GradCAM(model, LAYER)(x).contributions
