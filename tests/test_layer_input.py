"""Maps of a layer's input (``of_input=True``, ``probe(..., at="input")``): the input of a layer is the output of
the layer before it, so its map is that layer's map, in PyTorch, Keras and Flax; the three frameworks agree on the
embedded network's inputs, where a tensor read by two layers (the residual block's input, also its shortcut) has at
each the gradient along that layer's paths; the methods that act on a layer's output refuse it.

Signed maps (``relu=False``) are compared: a ReLU'd map of random weights may be all zero and agree trivially.

Tolerances: a layer's input and the previous layer's output are the same tensor, so ``A`` and ``G`` agree exactly
and the normalised maps to float32 rounding (1e-6). Across frameworks, ``atol=1e-5`` on normalised maps, as in
``tests/test_cross_framework.py``.
"""
import numpy as np
import pytest
import torch
from backend_kits import embedded_net_everywhere
from torch import nn

from gradcam import FinerCAM, GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM, SmoothGradCAMPlusPlus
from gradcam.methods.cam import CAM
from gradcam.methods.perturbation import AblationCAM

SAME = dict(rtol=0, atol=1e-6)
SIGNED = dict(relu=False)


def _torch_sequential(inplace: bool) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 4),
    ).eval()


IMAGES = np.random.default_rng(0).random((2, 3, 10, 10), dtype=np.float32)


@pytest.mark.parametrize("method", [GradCAM, GradCAMPlusPlus, LayerCAM, ScoreCAM])
def test_torch_input_of_a_layer_is_the_output_of_the_one_before(method):
    model = _torch_sequential(inplace=False)
    before = method(model, "1", **SIGNED)(IMAGES, target=[0, 3])
    of_input = method(model, "2", of_input=True, **SIGNED)(IMAGES, target=[0, 3])
    np.testing.assert_allclose(of_input.maps, before.maps, **SAME)
    np.testing.assert_allclose(of_input.raw_by_layer["2"], before.raw_by_layer["1"], **SAME)
    assert np.abs(before.raw_by_layer["1"]).max() > 0
    # the input of conv 2 is not its output: the option changes what is read
    assert not np.allclose(method(model, "2", **SIGNED)(IMAGES, target=[0, 3]).maps, of_input.maps, atol=1e-3)


@pytest.mark.parametrize(
    "method, options",
    [(FinerCAM, {}), (SmoothGradCAMPlusPlus, {"n_samples": 3, "seed": 0})],
    ids=["finercam", "smoothgradcam++"],
)
def test_methods_with_probes_of_their_own_read_the_input_too(method, options):
    # Finer-CAM probes the comparison classes and Smooth Grad-CAM++ the noisy copies: at the input as well
    model = _torch_sequential(inplace=False)
    before = method(model, "1", **options)(IMAGES, target=[0, 3])
    of_input = method(model, "2", of_input=True, **options)(IMAGES, target=[0, 3])
    np.testing.assert_allclose(of_input.raw_by_layer["2"], before.raw_by_layer["1"], rtol=1e-5, atol=1e-7)
    assert np.abs(before.raw_by_layer["1"]).max() > 0


def test_torch_probe_at_input_gives_the_previous_layers_a_and_g():
    from gradcam.backends import torch as backend

    model = _torch_sequential(inplace=False)
    out = backend.probe(model, IMAGES, "1", target=2)
    inp = backend.probe(model, IMAGES, "2", target=2, at="input")
    np.testing.assert_array_equal(inp.activations["2"], out.activations["1"])
    np.testing.assert_allclose(inp.gradients["2"], out.gradients["1"], rtol=1e-6, atol=1e-7)
    with pytest.raises(ValueError, match="at must be 'output' or 'input'"):
        backend.probe(model, IMAGES, "2", at="inside")


def test_torch_input_edited_in_place_by_the_layer_is_read_before_the_edit():
    # the in-place ReLU rewrites its input: the map of its input is the conv's, not the ReLU's, and the model's
    # output is unchanged
    model = _torch_sequential(inplace=True)
    expected = model(torch.from_numpy(IMAGES)).detach().numpy()
    conv = GradCAM(model, "0", **SIGNED)(IMAGES, target=1)
    of_input = GradCAM(model, "1", of_input=True, **SIGNED)(IMAGES, target=1)
    np.testing.assert_allclose(of_input.maps, conv.maps, **SAME)
    np.testing.assert_allclose(of_input.scores, conv.scores, rtol=1e-6)
    np.testing.assert_array_equal(model(torch.from_numpy(IMAGES)).detach().numpy(), expected)
    assert model[0].weight.requires_grad and not model[1]._forward_pre_hooks


def test_keras_functional_input_of_a_layer_is_the_output_of_the_one_before():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((10, 10, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", name="c1")(inputs)
    x = keras.layers.ReLU(name="r1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="c2")(x)
    x = keras.layers.ReLU(name="r2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(x))
    images = IMAGES.transpose(0, 2, 3, 1)
    before = GradCAM(model, "r1", **SIGNED)(images, target=[0, 3])
    of_input = GradCAM(model, "c2", of_input=True, **SIGNED)(images, target=[0, 3])
    np.testing.assert_allclose(of_input.maps, before.maps, **SAME)
    assert np.abs(before.raw_by_layer["r1"]).max() > 0
    assert not np.allclose(GradCAM(model, "c2", **SIGNED)(images, target=[0, 3]).maps, of_input.maps, atol=1e-3)
    # the layer is patched only while traced: the model is left as found
    assert "call" not in vars(model.get_layer("c2"))


def test_flax_input_of_a_module_is_the_output_of_the_one_before():
    pytest.importorskip("flax")
    import flax.linen as nn_flax
    import jax
    import jax.numpy as jnp

    class Net(nn_flax.Module):
        @nn_flax.compact
        def __call__(self, x):
            x = nn_flax.Conv(6, (3, 3), name="c1")(x)
            x = nn_flax.Conv(8, (3, 3), name="c2")(x)
            return nn_flax.Dense(4, name="fc")(jnp.mean(nn_flax.relu(x), axis=(1, 2)))

    images = IMAGES.transpose(0, 2, 3, 1)
    variables = Net().init(jax.random.PRNGKey(0), images)
    model = (Net(), variables)
    before = GradCAM(model, "c1", **SIGNED)(images, target=[0, 3])
    of_input = GradCAM(model, "c2", of_input=True, **SIGNED)(images, target=[0, 3])
    np.testing.assert_allclose(of_input.maps, before.maps, **SAME)
    assert np.abs(before.raw_by_layer["c1"]).max() > 0
    assert not np.allclose(GradCAM(model, "c2", **SIGNED)(images, target=[0, 3]).maps, of_input.maps, atol=1e-3)


@pytest.mark.parametrize("layer", ["features.conv1", "features.conv2"])
def test_the_three_frameworks_agree_on_a_layers_input(layer):
    # conv1's input is the block's input, which the shortcut reads too: G is along conv1's paths in all three
    pytest.importorskip("keras")
    pytest.importorskip("flax")
    names = {
        "torch": layer,
        "tensorflow": layer.replace(".conv", "_conv"),
        "jax": layer.replace(".", "/"),
    }
    maps = {}
    for framework, (model, x) in embedded_net_everywhere(weights_seed=3, input_seed=1).items():
        maps[framework] = GradCAM(model, names[framework], of_input=True)(x, target=[1, 4]).maps
    assert maps["torch"].std() > 0.05  # a map with structure, not an empty one that agrees trivially
    np.testing.assert_allclose(maps["tensorflow"], maps["torch"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(maps["jax"], maps["torch"], rtol=0, atol=1e-5)


@pytest.mark.parametrize("method", [CAM, AblationCAM])
def test_methods_acting_on_the_layer_output_refuse_of_input(method):
    with pytest.raises(ValueError, match="also acts on the layer's output"):
        method(_torch_sequential(inplace=False), "2", of_input=True)


def test_of_input_must_be_a_bool():
    with pytest.raises(ValueError, match="of_input must be True or False"):
        GradCAM(_torch_sequential(inplace=False), "2", of_input="yes")


class _EditsItsInputLater(nn.Module):
    """``b`` (a ReLU) reads ``h = a(x)``, which the forward then doubles in place: ``b(h) + 2 h``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.ReLU()
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        h = self.a(x)
        out = self.b(h)
        h.mul_(2)
        return self.head((out + h).mean(dim=(2, 3)))


def test_torch_input_edited_in_place_after_the_layer_keeps_its_values():
    from gradcam.backends import torch as backend

    model = _EditsItsInputLater().eval()
    expected = model(torch.from_numpy(IMAGES)).detach().numpy()
    inp = backend.probe(model, IMAGES, "b", target=0, at="input")
    out = backend.probe(model, IMAGES, "a", target=0)
    # the recorded input is h before the doubling, as a's output is; the score is the model's own
    np.testing.assert_array_equal(inp.activations["b"], out.activations["a"])
    np.testing.assert_allclose(inp.scores, expected[:, 0], rtol=1e-6)
    # G along b's path only: h also reaches the score through 2 h, so a's gradient is larger by that path
    assert not np.allclose(inp.gradients["b"], out.gradients["a"], atol=1e-6)
