"""The ``Neuron`` target: one unit of an internal layer, scored by the backend from that layer's output in the
explaining forward. Hand-worked values on a model whose first layer scales its input per channel."""
import numpy as np
import pytest
import torch
from backend_kits import embedded_net_everywhere
from torch import nn

from gradcam import GradCAM, Saliency, ScoreCAM, metrics
from gradcam.targets import Neuron

# one channel, 2x2 pixels per image
X = np.array([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.5, -1.0], [2.0, 6.0]]]], dtype=np.float32)


def _scaling_net() -> nn.Sequential:
    """Layer "0": channel k of its output is ``w_k x`` with ``w = (1, 2)``; layer "2" sums the channels."""
    scale = nn.Conv2d(1, 2, 1, bias=False)
    total = nn.Conv2d(2, 1, 1, bias=False)
    with torch.no_grad():
        scale.weight.copy_(torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1))
        total.weight.fill_(1.0)
    return nn.Sequential(scale, nn.Identity(), total, nn.Flatten(), nn.Linear(4, 3)).eval()


def test_neuron_at_a_position_by_hand():
    from gradcam.backends import torch as backend

    # s_n = A_{n,1,0,1} = 2 x_{n,0,1}: 4 and -2; G at layer 0 is 1 at (channel 1, row 0, column 1), 0 elsewhere
    probe = backend.probe(_scaling_net(), X, "0", target=Neuron("0", 1, position=(0, 1)))
    np.testing.assert_array_equal(probe.scores, [4.0, -2.0])
    expected = np.zeros((2, 2, 2, 2), dtype=np.float32)
    expected[:, 1, 0, 1] = 1.0
    np.testing.assert_array_equal(probe.gradients["0"], expected)
    np.testing.assert_array_equal(probe.targets, [-1, -1])


def test_neuron_mean_over_the_grid_by_hand():
    from gradcam.backends import torch as backend

    # s_n = mean_p 2 x_p: 2 * 10 / 4 = 5 and 2 * 7.5 / 4 = 3.75; G = 1/4 on channel 1
    probe = backend.probe(_scaling_net(), X, "0", target=Neuron("0", 1))
    np.testing.assert_allclose(probe.scores, [5.0, 3.75], rtol=1e-7)
    np.testing.assert_array_equal(probe.gradients["0"][:, 1], np.full((2, 2, 2), 0.25, dtype=np.float32))
    np.testing.assert_array_equal(probe.gradients["0"][:, 0], np.zeros((2, 2, 2), dtype=np.float32))


def test_gradcam_of_an_earlier_layer_for_a_later_neuron_by_hand():
    # neuron: unit 0 of layer "2" at (1, 1), which is A0 + A1 there = 3 x_11. Grad-CAM at layer "0": G is 1 at
    # (1, 1) on both channels, alpha_k = 1/4, the raw map ReLU(sum_k alpha_k A_k) = ReLU(3 x / 4)
    explanation = GradCAM(_scaling_net(), "0")(X, target=Neuron("2", 0, position=(1, 1)))
    np.testing.assert_allclose(explanation.scores, [12.0, 18.0], rtol=1e-7)
    np.testing.assert_allclose(explanation.raw_by_layer["0"], np.maximum(0.75 * X[:, 0], 0), rtol=1e-6)
    np.testing.assert_allclose(explanation.weights_by_layer["0"], np.full((2, 2), 0.25), rtol=1e-7)


def test_saliency_of_a_neuron_by_hand():
    # d s / d x for s = 2 x_01: 2 at row 0, column 1; the map is |gradient| normalised: 1 there, 0 elsewhere
    explanation = Saliency(_scaling_net())(X, target=Neuron("0", 1, position=(0, 1)))
    expected = np.zeros((2, 2, 2))
    expected[:, 0, 1] = 1.0
    np.testing.assert_array_equal(explanation.maps, expected)


def test_a_dense_neuron_is_its_unit():
    from gradcam.backends import torch as backend

    model = _scaling_net()
    probe = backend.probe(model, X, "0", target=Neuron("4", 2))
    np.testing.assert_allclose(probe.scores, model(torch.from_numpy(X))[:, 2].detach().numpy(), rtol=1e-6)


def test_a_neuron_before_the_explained_layer_reaches_no_gradient():
    with pytest.raises(RuntimeError, match="does not depend on the output of '2'"):
        GradCAM(_scaling_net(), "2")(X, target=Neuron("0", 1))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Neuron("0", -1), "channel must be a non-negative integer"),
        (lambda: Neuron("0", 0, position=()), "position must be None or one non-negative integer"),
        (lambda: GradCAM(_scaling_net(), "0")(X, target=Neuron("0", 2)), "no channel 2 on axis 1"),
        (lambda: GradCAM(_scaling_net(), "0")(X, target=Neuron("0", 0, (2, 0))), r"not in layer '0'.s grid \(2, 2\)"),
        (lambda: GradCAM(_scaling_net(), "0")(X, target=Neuron("0", 0, (0,))), "not in layer"),
        (lambda: ScoreCAM(_scaling_net(), "0")(X, target=Neuron("0", 0)), "forward-only methods"),
        (lambda: metrics.average_drop(_scaling_net(), X, np.ones((2, 2, 2)), Neuron("0", 0)), "and the metrics"),
    ],
)
def test_bad_neurons_get_a_clear_error(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_an_unknown_neuron_layer_is_named():
    with pytest.raises(KeyError, match="nope"):
        GradCAM(_scaling_net(), "0")(X, target=Neuron("nope", 0))


def test_the_model_is_left_as_found():
    model = _scaling_net()
    GradCAM(model, "0")(X, target=Neuron("2", 0))
    assert all(not module._forward_hooks for module in model.modules())
    assert torch.is_grad_enabled()


# --- the same network in Keras and Flax (channels last): the same hand-worked numbers -----------------


def _keras_scaling_net():
    keras = pytest.importorskip("keras")
    inputs = keras.Input((2, 2, 1))
    a = keras.layers.Conv2D(2, 1, use_bias=False, name="scale")(inputs)
    b = keras.layers.Conv2D(1, 1, use_bias=False, name="total")(a)
    model = keras.Model(inputs, keras.layers.Dense(3, name="fc")(keras.layers.Flatten()(b)))
    model.get_layer("scale").set_weights([np.array([1.0, 2.0], dtype=np.float32).reshape(1, 1, 1, 2)])
    model.get_layer("total").set_weights([np.ones((1, 1, 2, 1), dtype=np.float32)])
    return model


def _flax_scaling_net():
    pytest.importorskip("flax")
    import flax.linen as fnn
    import jax

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            a = fnn.Conv(2, (1, 1), use_bias=False, name="scale")(x)
            b = fnn.Conv(1, (1, 1), use_bias=False, name="total")(a)
            return fnn.Dense(3, name="fc")(b.reshape(b.shape[0], -1))

    variables = Net().init(jax.random.PRNGKey(0), X.transpose(0, 2, 3, 1))
    params = dict(variables["params"])
    params["scale"] = {"kernel": np.array([1.0, 2.0], dtype=np.float32).reshape(1, 1, 1, 2)}
    params["total"] = {"kernel": np.ones((1, 1, 2, 1), dtype=np.float32)}
    return Net(), {"params": params}


CHANNELS_LAST = {"tensorflow": _keras_scaling_net, "jax": _flax_scaling_net}


@pytest.mark.parametrize("framework", CHANNELS_LAST)
def test_neuron_by_hand_in_keras_and_flax(framework):
    import importlib

    backend = importlib.import_module(f"gradcam.backends.{framework}")
    model, x = CHANNELS_LAST[framework](), X.transpose(0, 2, 3, 1)
    # as in PyTorch: s_n = 2 x_{n,0,1}, G one-hot at (row 0, column 1) of channel 1 (read channels first)
    probe = backend.probe(model, x, "scale", target=Neuron("scale", 1, position=(0, 1)))
    np.testing.assert_array_equal(probe.scores, [4.0, -2.0])
    expected = np.zeros((2, 2, 2, 2), dtype=np.float32)
    expected[:, 1, 0, 1] = 1.0
    np.testing.assert_array_equal(probe.gradients["scale"], expected)
    # the mean over the grid: 5 and 3.75
    np.testing.assert_allclose(backend.probe(model, x, "scale", target=Neuron("scale", 1)).scores, [5.0, 3.75])
    # Grad-CAM at "scale" for unit 0 of "total" at (1, 1): the raw map ReLU(3 x / 4)
    explanation = GradCAM(model, "scale")(x, target=Neuron("total", 0, position=(1, 1)))
    np.testing.assert_allclose(explanation.scores, [12.0, 18.0], rtol=1e-7)
    np.testing.assert_allclose(explanation.raw_by_layer["scale"], np.maximum(0.75 * X[:, 0], 0), rtol=1e-6)


@pytest.mark.parametrize("framework", CHANNELS_LAST)
def test_a_neuron_before_the_explained_layer_is_refused_in_keras_and_flax(framework):
    model, x = CHANNELS_LAST[framework](), X.transpose(0, 2, 3, 1)
    # Keras raises it from inside its compiled function, wrapped in TensorFlow's StagingError
    with pytest.raises(Exception, match="does not depend on the output of 'total'"):
        GradCAM(model, "total")(x, target=Neuron("scale", 1))


def test_flax_neuron_refuses_the_layer_input():
    model, x = _flax_scaling_net(), X.transpose(0, 2, 3, 1)
    with pytest.raises(ValueError, match="at the layers' outputs only"):
        GradCAM(model, "total", of_input=True)(x, target=Neuron("total", 0))


def test_the_three_frameworks_agree_on_a_neuron_of_the_embedded_network():
    pytest.importorskip("keras")
    pytest.importorskip("flax")
    results = {}
    for framework, (model, x) in embedded_net_everywhere(weights_seed=3, input_seed=1).items():
        # unit 7 is positive on about half of the 16x16 grid in both images: its gradient has a shape
        results[framework] = GradCAM(model, "block3", relu=False)(x, target=Neuron("features", 7))
    ours = results["torch"]
    assert not ours.warnings and ours.maps.std() > 0.05
    for framework in ("tensorflow", "jax"):
        # atol 1e-5 on normalised maps, rtol 1e-5 on the unit's mean activation (tests/test_cross_framework.py)
        np.testing.assert_allclose(results[framework].maps, ours.maps, rtol=0, atol=1e-5)
        np.testing.assert_allclose(results[framework].scores, ours.scores, rtol=1e-5)
