"""FullGrad (issue 16) and ``eigen_smooth`` on Smooth Grad-CAM++, Score-CAM (SS-CAM, IS-CAM) and Ablation-CAM.

FullGrad: the formula on hand-worked bias gradients; one tiny network written in PyTorch, Keras, Flax linen and
Flax nnx whose map is worked by hand; the embedded model's architecture in the three frameworks giving the same map;
pytorch-grad-cam 1.5.7's map (printed in .venv-bench) on a net whose maps all have the input's size; the refusals.

Tolerances: the reference computes in float64 and returns float32, so hand-worked values hold to ``rtol=1e-6``;
maps through a backend (float32 activations and gradients) to ``1e-5``.
"""
import numpy as np
import pytest
import torch
from torch import nn

import gradcam
from gradcam.methods.fullgrad import FullGrad
from gradcam.reference import family
from gradcam.reference import fullgrad as rules

# --- the formula ---------------------------------------------------------------------------------------------------

# The hand-worked network: x (1 channel, 2x2) -> conv1 (1x1, weight 1, bias -1) -> batch norm (gamma 2, beta 1,
# mean 0.5, var 3, eps 1: Q = 2 (O - 0.5) / 2 + 1 = O + 0.5, effective bias 1 - 2 * 0.5 / 2 = 0.5) -> ReLU ->
# conv2 (1x1, weight 2, bias 3) -> y = sum of the 2x2 map.
HAND_X = np.array([[0.0, 2.0], [3.0, 0.25]])
# Q = x - 0.5 = [[-0.5, 1.5], [2.5, -0.25]], y = sum(2 ReLU(Q) + 3) = 2 (1.5 + 2.5) + 12 = 20
HAND_SCORE = 20.0
# dy/dQ = dy/dO = dy/dx = 2 [Q > 0]
HAND_G = np.array([[0.0, 2.0], [2.0, 0.0]])
HAND_BIASES = [-1.0, 0.5, 3.0]  # conv1, bn, conv2
# psi(grad_x * x) = normalize([[0, 4], [6, 0]]) = [[0, 2/3], [1, 0]]; conv1 and bn: normalize(|G b|) = [[0, 1], [1, 0]];
# conv2: G = 1 everywhere, |1 * 3| is flat and psi makes it 0
HAND_RAW = np.array([[0.0, 2 / 3 + 2], [1 + 2, 0.0]])
HAND_MAP = HAND_RAW / 3


def test_the_hand_worked_saliency_from_its_parts():
    x, G = HAND_X[None, None], HAND_G[None, None]
    parts = [(G, [-1.0]), (G, [0.5]), (np.ones((1, 1, 2, 2)), [3.0])]
    np.testing.assert_allclose(rules.full_grad(x, G, parts)[0], HAND_RAW, rtol=1e-6)
    # completeness (the paper's eq. 2), which is why these parts: grad_x . x + sum_l sum_c (sum_ij G) b = y
    total = (G * x).sum() + sum(np.sum(g) * b[0] for g, b in parts)
    assert total == pytest.approx(HAND_SCORE)


def test_psi_normalises_each_channel_after_upsampling():
    # channel 0 = [[0, 2]] upsampled to 1x4 is [0, 0.5, 1.5, 2] (half-pixel centres) -> [0, 1/4, 3/4, 1];
    # channel 1 = [[-3, -3]] is flat and adds 0, although it is the larger one
    maps = np.array([[[[0.0, 2.0]], [[-3.0, -3.0]]]])
    np.testing.assert_allclose(rules.psi_sum(maps, (1, 4)), [[[0, 0.25, 0.75, 1]]], rtol=1e-6)


def test_bias_gradient_refuses_a_bias_of_another_length():
    with pytest.raises(ValueError, match=r"the bias must have shape \(C,\) = \(1,\)"):
        rules.bias_gradient(np.ones((1, 1, 2, 2)), [1.0, 2.0])


# --- the hand-worked network in every framework -------------------------------------------------------------------


class TorchHandNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn, self.conv2 = nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1, eps=1.0), nn.Conv2d(1, 1, 1)
        self.relu = nn.ReLU()
        with torch.no_grad():
            for tensor, value in [
                (self.conv1.weight, 1.0), (self.conv1.bias, -1.0), (self.bn.weight, 2.0), (self.bn.bias, 1.0),
                (self.bn.running_mean, 0.5), (self.bn.running_var, 3.0),
                (self.conv2.weight, 2.0), (self.conv2.bias, 3.0),
            ]:
                tensor.fill_(value)

    def forward(self, x):
        return self.conv2(self.relu(self.bn(self.conv1(x)))).flatten(1).sum(dim=1, keepdim=True)


def torch_hand():
    return TorchHandNet().eval(), HAND_X[None, None].astype(np.float32)


def keras_hand(activation=None):
    keras = pytest.importorskip("keras")
    inputs = keras.Input((2, 2, 1))
    conv1 = keras.layers.Conv2D(1, 1, name="conv1", activation=activation)
    bn = keras.layers.BatchNormalization(epsilon=1.0, name="bn")
    conv2 = keras.layers.Conv2D(1, 1, name="conv2")
    total = keras.layers.Dense(1, use_bias=False, name="sum")
    y = total(keras.layers.Flatten()(conv2(keras.layers.ReLU()(bn(conv1(inputs))))))
    conv1.set_weights([np.ones((1, 1, 1, 1)), np.array([-1.0])])
    bn.set_weights([np.array([2.0]), np.array([1.0]), np.array([0.5]), np.array([3.0])])
    conv2.set_weights([np.full((1, 1, 1, 1), 2.0), np.array([3.0])])
    total.set_weights([np.ones((4, 1))])
    return keras.Model(inputs, y), HAND_X[None, :, :, None].astype(np.float32)


def flax_hand():
    nn_ = pytest.importorskip("flax.linen")

    class FlaxHandNet(nn_.Module):
        @nn_.compact
        def __call__(self, x):
            h = nn_.BatchNorm(use_running_average=True, epsilon=1.0, name="bn")(nn_.Conv(1, (1, 1), name="conv1")(x))
            h = nn_.Conv(1, (1, 1), name="conv2")(nn_.relu(h))
            return h.reshape(h.shape[0], -1).sum(axis=1, keepdims=True)

    one = np.ones((1, 1, 1, 1), np.float32)
    variables = {
        "params": {
            "conv1": {"kernel": one, "bias": np.array([-1.0], np.float32)},
            "bn": {"scale": np.array([2.0], np.float32), "bias": np.array([1.0], np.float32)},
            "conv2": {"kernel": 2 * one, "bias": np.array([3.0], np.float32)},
        },
        "batch_stats": {"bn": {"mean": np.array([0.5], np.float32), "var": np.array([3.0], np.float32)}},
    }
    return (FlaxHandNet(), variables), HAND_X[None, :, :, None].astype(np.float32)


def nnx_hand():
    nnx = pytest.importorskip("flax.nnx")
    import jax.numpy as jnp

    class NnxHandNet(nnx.Module):
        def __init__(self):
            rngs = nnx.Rngs(0)
            self.conv1 = nnx.Conv(1, 1, (1, 1), rngs=rngs)
            self.bn = nnx.BatchNorm(1, epsilon=1.0, use_running_average=True, rngs=rngs)
            self.conv2 = nnx.Conv(1, 1, (1, 1), rngs=rngs)
            for variable, value in [
                (self.conv1.kernel, 1.0), (self.conv1.bias, -1.0), (self.bn.scale, 2.0), (self.bn.bias, 1.0),
                (self.bn.mean, 0.5), (self.bn.var, 3.0), (self.conv2.kernel, 2.0), (self.conv2.bias, 3.0),
            ]:
                variable[...] = jnp.full(variable[...].shape, value)

        def __call__(self, x):
            h = self.conv2(nnx.relu(self.bn(self.conv1(x))))
            return h.reshape(h.shape[0], -1).sum(axis=1, keepdims=True)

    return NnxHandNet(), HAND_X[None, :, :, None].astype(np.float32)


HAND_NETS = {"torch": torch_hand, "keras": keras_hand, "flax": flax_hand, "nnx": nnx_hand}


@pytest.mark.parametrize("framework", HAND_NETS)
def test_the_hand_worked_network_in_every_framework(framework):
    model, x = HAND_NETS[framework]()
    cam = FullGrad(model)
    biases = {name: b for name, b in cam.backend.layer_biases(cam.model, x)}
    assert sorted(biases) == ["bn", "conv1", "conv2"]
    np.testing.assert_allclose([biases[name][0] for name in ("conv1", "bn", "conv2")], HAND_BIASES, rtol=1e-6)
    ex = cam(x)
    np.testing.assert_allclose(ex.scores, [HAND_SCORE], rtol=1e-6)
    np.testing.assert_allclose(ex.raw[0], HAND_RAW, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ex.maps[0], HAND_MAP, rtol=1e-5, atol=1e-6)
    assert ex.method == "fullgrad" and ex.layers == ["input"]


# --- the same network in three frameworks; pytorch-grad-cam ---------------------------------------------------------


def test_the_embedded_architecture_gives_the_same_map_in_torch_keras_and_flax():
    pytest.importorskip("keras")
    pytest.importorskip("flax")
    from backend_kits import embedded_net_everywhere

    maps = {name: FullGrad(model)(x, [0, 3]).maps for name, (model, x) in embedded_net_everywhere(1, 2).items()}
    # six batch norms on maps of 32 x 32 down to 16 x 16, upsampled to 64 x 64: every channel's psi counts
    assert maps["torch"].shape == (2, 64, 64) and maps["torch"].std() > 0.05
    for name in ("tensorflow", "jax"):
        np.testing.assert_allclose(maps[name], maps["torch"], rtol=0, atol=1e-5)


def full_resolution_net() -> nn.Module:
    """conv(bias) -> BN -> ReLU -> conv(bias) -> BN -> ReLU -> GAP -> dense: every map at the input's 6 x 6."""
    rng = np.random.default_rng(5)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 2),
    )
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            var = name.endswith("running_var")
            tensor.copy_(torch.tensor(rng.uniform(0.5, 2.0, tensor.shape) if var else rng.normal(size=tensor.shape)))
    return model.eval()


PEER_X = np.random.default_rng(6).random((1, 3, 6, 6), dtype=np.float32)
# pytorch_grad_cam.FullGrad(full_resolution_net(), [])(PEER_X, targets=[ClassifierOutputTarget(1)]), 1.5.7
PEER_FULLGRAD = np.float32([[
    [0.16868965, 0.06656324, 0.22506906, 0.0, 0.41735458, 0.1644104],
    [0.36692816, 0.4884986, 0.3515219, 0.33569598, 0.5134369, 0.18973143],
    [0.56219226, 0.6910476, 0.70948684, 0.9949994, 0.6840134, 0.2030377],
    [0.68716574, 0.9842528, 1.0, 0.15639696, 0.5779413, 0.44939843],
    [0.6496384, 0.4269622, 0.3724691, 0.48644164, 0.44218743, 0.3393437],
    [0.5687948, 0.6450111, 0.50965846, 0.83087504, 0.60394084, 0.13853624],
]])


def pytorch_grad_cams_normalize(maps):
    """``scale_cam_image``'s rescaling: ``(m - min) / (max(m - min) + 1e-7)``."""
    maps = np.asarray(maps, np.float32) - np.min(maps, axis=(-2, -1), keepdims=True)
    return maps / (1e-7 + maps.max(axis=(-2, -1), keepdims=True))


def test_pytorch_grad_cams_fullgrad_where_nothing_is_resized(monkeypatch):
    ours = FullGrad(full_resolution_net())(PEER_X, 1).maps
    # the only difference left is its 1e-7 in each channel's rescaling: 7.4e-5 here, where some channels of
    # G b span about 1e-3
    assert 1e-5 < np.abs(ours - PEER_FULLGRAD).max() < 2e-4
    monkeypatch.setattr(rules, "normalize", pytorch_grad_cams_normalize)
    with_its_epsilon = FullGrad(full_resolution_net())(PEER_X, 1)
    np.testing.assert_allclose(pytorch_grad_cams_normalize(with_its_epsilon.raw), PEER_FULLGRAD, rtol=0, atol=1e-6)


def test_a_target_function_gives_the_class_targets_map():
    model = full_resolution_net()
    by_class = FullGrad(model)(PEER_X, 1)
    by_function = FullGrad(model)(PEER_X, lambda out: out[:, 1])
    np.testing.assert_array_equal(by_function.maps, by_class.maps)
    assert not np.allclose(FullGrad(model)(PEER_X, 0).maps, by_class.maps, atol=1e-2)


# --- what FullGrad refuses ----------------------------------------------------------------------------------------


def test_fullgrad_takes_no_layer():
    with pytest.raises(ValueError, match="FullGrad takes every layer with a bias"):
        FullGrad(torch_hand()[0], "conv1")


def test_batch_norm_with_batch_statistics_has_no_fixed_bias():
    model, x = torch_hand()
    with pytest.raises(ValueError, match=r"batch norm 'bn' normalizes with the batch's own statistics.*model.eval"):
        FullGrad(model.train())(x)


def test_a_keras_layer_with_its_own_activation_is_refused():
    model, x = keras_hand(activation="relu")
    with pytest.raises(ValueError, match=r"layer 'conv1' applies the activation 'relu' after its bias"):
        FullGrad(model)(x)


def test_a_jax_pair_of_functions_is_refused():
    pytest.importorskip("jax")
    pair = (lambda x: x, lambda f: f.sum(axis=(1, 2)))
    with pytest.raises(TypeError, match=r"a \(features, head\) pair of functions has no layers whose biases"):
        FullGrad(pair)(HAND_X[None, :, :, None].astype(np.float32))


# --- eigen_smooth on the methods that are not ChannelWeightMethods ---------------------------------------------------


class MeanHead(nn.Module):
    """Identity ``features`` (its output is the input ``A``), then ``y = W mean_ij A``."""

    def __init__(self, W):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor(W, dtype=torch.float32))

    def forward(self, x):
        return self.fc(self.features(x).mean(dim=(2, 3)))


SMOOTHED = {
    "smoothgradcam++": (gradcam.SmoothGradCAMPlusPlus, {"n_samples": 2}),
    "scorecam": (gradcam.ScoreCAM, {}),
    "sscam": (gradcam.methods.SSCAM, {"n_samples": 2}),
    "iscam": (gradcam.methods.ISCAM, {"n_samples": 2}),
    "ablationcam": (gradcam.AblationCAM, {}),
}


@pytest.mark.parametrize("name", SMOOTHED)
def test_eigen_smooth_is_the_first_component_of_the_methods_own_weighted_activations(name):
    method, options = SMOOTHED[name]
    x = np.random.default_rng(2).random((2, 4, 5, 5)).astype(np.float32)
    model = MeanHead(np.random.default_rng(3).standard_normal((3, 4)))
    plain = method(model, "features", quiet=True, **options)(x, [0, 2])
    for eigen_smooth in (True, "centred"):
        smoothed = method(model, "features", eigen_smooth=eigen_smooth, quiet=True, **options)(x, [0, 2])
        np.testing.assert_array_equal(smoothed.weights, plain.weights)  # the weights are the method's
        expected = family.eigen_smooth_map(x, plain.weights, centred=eigen_smooth == "centred")
        np.testing.assert_allclose(smoothed.raw, expected, rtol=1e-5, atol=1e-7)
        assert np.abs(smoothed.maps - plain.maps).max() > 0.05  # a different map, not the sum again


@pytest.mark.parametrize("name", SMOOTHED)
def test_eigen_smooth_is_checked_as_for_the_channel_weight_methods(name):
    method, options = SMOOTHED[name]
    with pytest.raises(ValueError, match="eigen_smooth must be False, True or 'centred', got 'yes'"):
        method(MeanHead(np.eye(2)), "features", eigen_smooth="yes", **options)


def test_a_keras_softmax_head_taken_off_is_read_as_its_logits():
    # a Keras application ends in Dense(activation="softmax"); the explained model takes that softmax off, so the
    # head's bias is read as a plain dense layer's, and the map equals that of the same model built without it
    keras = pytest.importorskip("keras")

    def build(activation):
        inputs = keras.Input((6, 6, 3))
        features = keras.layers.ReLU()(keras.layers.Conv2D(4, 3, name="conv")(inputs))
        pooled = keras.layers.GlobalAveragePooling2D()(features)
        return keras.Model(inputs, keras.layers.Dense(3, activation=activation, name="predictions")(pooled))

    softmax, logits = build("softmax"), build(None)
    logits.set_weights(softmax.get_weights())
    x = np.random.default_rng(2).random((2, 6, 6, 3), dtype=np.float32)
    with_head = gradcam.FullGrad(softmax, quiet=True)(x, target=[0, 2])
    without = gradcam.FullGrad(logits, quiet=True)(x, target=[0, 2])
    np.testing.assert_allclose(with_head.maps, without.maps, atol=1e-6)
    assert with_head.maps.max() == pytest.approx(1.0)


def test_a_biased_layer_the_score_does_not_use_adds_nothing():
    # a detector's proposal head runs, but its boxes are detached: the score depends on none of its biases
    torch = pytest.importorskip("torch")
    from torch import nn

    class WithIgnoredHead(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.proposals = nn.Conv2d(4, 2, 1)
            self.head = nn.Linear(4, 3)
            self.seen = None

        def forward(self, x):
            features = torch.relu(self.conv(x))
            self.seen = self.proposals(features).detach()
            return self.head(features.mean(dim=(2, 3)))

    model = WithIgnoredHead().eval()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ex = FullGrad(model, quiet=True)(x, target=[0, 1])
    model.proposals.bias.data.zero_()  # a bias the score does not use cannot change the map
    np.testing.assert_array_equal(FullGrad(model, quiet=True)(x, target=[0, 1]).maps, ex.maps)
    assert np.isfinite(ex.maps).all() and ex.maps.max() == pytest.approx(1.0)
