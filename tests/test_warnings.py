"""Nothing degenerate is silent (issue 14): an all-zero or flat map says why, from the layer's activations and
gradients, in ``Explanation.warnings``, as a Python warning and in the command's records; in every framework,
on small models built to produce each case."""
from __future__ import annotations

import warnings
import weakref

import numpy as np
import pytest
import torch
from torch import nn

import gradcam
from gradcam.batch.job import Explainer, ExplainJob
from gradcam.batch.loading import LoadedModel, ModelSpec, scaled
from gradcam.batch.reader import DecodedBatch
from gradcam.batch.sources import InputItem
from gradcam.explanation import (
    DegenerateMapWarning,
    ExplanationWarning,
    GradcamWarning,
    NoReluWarning,
    ProbabilityWarning,
)
from gradcam.methods import diagnosis

# Every model below has two layers on an input x of 2 channels and three outputs:
#   "features" = ReLU(x), "dead" = ReLU(x - 10) (zero for x in [0, 1]),
#   y0 = mean(x)                         does not depend on either layer (its gradient there is zero),
#   y1 = -mean(features)                 every channel weight negative: the weighted sum is negative,
#   y2 = mean(features) + mean(dead)     the dead layer's activations are zero (its gradient is not).
INDEPENDENT, NEGATIVE, THROUGH_BOTH = 0, 1, 2


class TorchNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features, self.dead = nn.ReLU(), nn.ReLU()

    def forward(self, x):
        f, d = self.features(x), self.dead(x - 10)
        mean = lambda t: t.mean(dim=(1, 2, 3))  # noqa: E731
        return torch.stack([mean(x), -mean(f), mean(f) + mean(d)], dim=1)


def torch_model():
    return TorchNet().eval(), lambda x: torch.as_tensor(x.transpose(0, 3, 1, 2).copy())


def keras_model():
    keras = pytest.importorskip("keras")

    class Head(keras.layers.Layer):
        def call(self, tensors):
            x, f, d = tensors
            mean = lambda t: keras.ops.mean(t, axis=(1, 2, 3))  # noqa: E731
            return keras.ops.stack([mean(x), -mean(f), mean(f) + mean(d)], axis=1)

    inputs = keras.Input((4, 4, 2))
    features = keras.layers.ReLU(name="features")(inputs)
    dead = keras.layers.ReLU(name="dead")(keras.layers.Rescaling(1.0, offset=-10.0)(inputs))
    return keras.Model(inputs, Head()([inputs, features, dead])), lambda x: x


def flax_model():
    pytest.importorskip("flax")
    import flax.linen as fnn
    import jax
    import jax.numpy as jnp

    class Relu(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            return jax.nn.relu(x)

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            f, d = Relu(name="features")(x), Relu(name="dead")(x - 10)
            mean = lambda t: t.mean(axis=(1, 2, 3))  # noqa: E731
            return jnp.stack([mean(x), -mean(f), mean(f) + mean(d)], axis=1)

    return (Net(), {}), lambda x: x


MODELS = {"torch": torch_model, "tensorflow": keras_model, "jax": flax_model}


@pytest.fixture(scope="module", params=list(MODELS))
def net(request):
    model, to_input = MODELS[request.param]()
    x = np.random.default_rng(0).uniform(0.1, 1.0, size=(3, 4, 4, 2)).astype(np.float32)  # NHWC
    return model, to_input, x


def explain(model, x, layer, target, method=gradcam.GradCAM, **options):
    with warnings.catch_warnings(record=True) as issued:
        warnings.simplefilter("always")
        ex = method(model, layer, **options)(x, target=target)
    return ex, [w for w in issued if issubclass(w.category, GradcamWarning)]


def test_a_target_that_does_not_depend_on_the_layer(net):
    model, to_input, x = net
    ex, issued = explain(model, to_input(x), "features", INDEPENDENT)
    np.testing.assert_array_equal(ex.maps, np.zeros((3, 4, 4), np.float32))
    assert ex.warnings == (f"images 0, 1, 2: the gradcam map at layer 'features' is all zero: {diagnosis.INDEPENDENT}",)
    assert ex.warnings[0].images == (0, 1, 2) and ex.warnings[0].category is DegenerateMapWarning
    assert [(w.category, str(w.message)) for w in issued] == [(DegenerateMapWarning, ex.warnings[0])]


def test_a_weighted_sum_negative_everywhere(net):
    model, to_input, x = net
    ex, issued = explain(model, to_input(x), "features", NEGATIVE)
    assert np.all(ex.weights < 0)
    np.testing.assert_array_equal(ex.raw, np.zeros((3, 4, 4), np.float32))
    assert [w.reason for w in ex.warnings] == [f"the gradcam map at layer 'features' is all zero: {diagnosis.NEGATIVE}"]
    assert len(issued) == 1


def test_a_dead_layer(net):
    model, to_input, x = net
    ex, _ = explain(model, to_input(x), "dead", THROUGH_BOTH)
    np.testing.assert_allclose(ex.weights, np.full((3, 2), 1 / 32), rtol=1e-6)  # d mean(dead) / d dead = 1/(2*16)
    assert [w.reason for w in ex.warnings] == [f"the gradcam map at layer 'dead' is all zero: {diagnosis.DEAD}"]


def test_a_flat_map(net):
    model, to_input, x = net
    ex, _ = explain(model, to_input(np.full((1, 4, 4, 2), 0.5, np.float32)), "features", THROUGH_BOTH)
    np.testing.assert_allclose(ex.raw, np.full((1, 4, 4), 2 * 0.5 / 32), rtol=1e-6)  # both channels
    assert ex.warnings == (f"image 0: the gradcam map at layer 'features' is flat: {diagnosis.FLAT}",)


def test_a_good_map_has_no_warning(net):
    model, to_input, x = net
    ex, issued = explain(model, to_input(x), "features", THROUGH_BOTH)
    assert ex.warnings == () and issued == []


def test_the_warning_points_at_the_callers_line(net):
    model, to_input, x = net
    _, issued = explain(model, to_input(x), "features", INDEPENDENT)
    assert issued[0].filename == __file__


def test_quiet_keeps_the_warnings_in_the_explanation_only(net):
    model, to_input, x = net
    ex, issued = explain(model, to_input(x), "features", INDEPENDENT, quiet=True)
    assert len(ex.warnings) == 1 and issued == []


@pytest.mark.parametrize(
    "method, expected",
    [
        (gradcam.HiResCAM, diagnosis.NEGATIVE),
        (gradcam.LayerCAM, diagnosis.NEGATIVE),  # ReLU(G) is zero: G < 0 everywhere
        (gradcam.XGradCAM, diagnosis.NEGATIVE),
        (gradcam.GradCAMPlusPlus, diagnosis.NEGATIVE),
    ],
)
def test_every_gradient_method_names_the_reason(method, expected):
    model, to_input = torch_model()
    x = to_input(np.random.default_rng(0).uniform(0.1, 1.0, size=(2, 4, 4, 2)).astype(np.float32))
    ex, _ = explain(model, x, "features", NEGATIVE, method=method)
    assert [w.reason for w in ex.warnings] == [f"the {method.name} map at layer 'features' is all zero: {expected}"]
    ex, _ = explain(model, x, "features", INDEPENDENT, method=method)
    assert [w.reason for w in ex.warnings] == [
        f"the {method.name} map at layer 'features' is all zero: {diagnosis.INDEPENDENT}"
    ]


def test_eigen_cam_names_a_dead_layer_only():
    model, to_input = torch_model()
    x = to_input(np.random.default_rng(0).uniform(0.1, 1.0, size=(2, 4, 4, 2)).astype(np.float32))
    ex, _ = explain(model, x, "dead", INDEPENDENT, method=gradcam.EigenCAM)
    assert [w.reason for w in ex.warnings] == [f"the eigencam map at layer 'dead' is all zero: {diagnosis.DEAD}"]
    ex, _ = explain(model, x, "features", INDEPENDENT, method=gradcam.EigenCAM)  # no gradient enters its map
    assert ex.warnings == ()


def test_score_cam_on_a_dead_layer():
    model, to_input = torch_model()
    x = to_input(np.random.default_rng(0).uniform(0.1, 1.0, size=(2, 4, 4, 2)).astype(np.float32))
    ex, _ = explain(model, x, "dead", THROUGH_BOTH, method=gradcam.ScoreCAM)
    assert [w.reason for w in ex.warnings] == [f"the scorecam map at layer 'dead' is all zero: {diagnosis.DEAD}"]


def test_occlusion_that_lowers_no_score():
    model, to_input = torch_model()
    x = to_input(np.random.default_rng(0).uniform(0.1, 1.0, size=(2, 4, 4, 2)).astype(np.float32))
    # y1 = -mean(ReLU(x)): occluding with 0 raises it everywhere
    ex, _ = explain(model, x, None, NEGATIVE, method=gradcam.Occlusion, window=2, stride=2, score="raw")
    assert ex.warnings == (f"images 0, 1: {diagnosis.NO_DROP}",)


def test_several_layers_warn_per_layer():
    model, to_input = torch_model()
    x = to_input(np.random.default_rng(0).uniform(0.1, 1.0, size=(2, 4, 4, 2)).astype(np.float32))
    ex, _ = explain(model, x, ["features", "dead"], THROUGH_BOTH)
    assert [w.reason for w in ex.warnings] == [f"the gradcam map at layer 'dead' is all zero: {diagnosis.DEAD}"]
    assert ex.maps.max() == 1.0  # the other layer's map carries the average


def test_warnings_follow_the_rows_of_a_batch():
    warning = ExplanationWarning(DegenerateMapWarning, "why", [0, 2])
    assert warning == "images 0, 2: why" and warning.concerns(2) and not warning.concerns(1)
    assert warning.of_rows([2, 1]) == "image 0: why" and warning.of_rows([1]) is None
    assert ExplanationWarning(DegenerateMapWarning, "all").of_rows([3]) == "all"


def test_the_command_writes_the_warnings_to_its_records():
    model = TorchNet().eval()
    prepare = scaled("NCHW")
    loaded = LoadedModel(model, "torch", "test", (4, 4), lambda images: prepare(images)[:, :2])  # 2 channels
    job = ExplainJob(ModelSpec(), ("gradcam", "eigencam"), "dead", THROUGH_BOTH, (4, 4), 2, pictures=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GradcamWarning)  # the command's methods are quiet
        explainer = Explainer(loaded, job)
        pixels = np.random.default_rng(0).integers(30, 255, size=(2, 4, 4, 3), dtype=np.uint8)
        items = [InputItem(f"/in/{i}.png", str(i)) for i in range(2)]
        output = explainer.explain(DecodedBatch(items, pixels, [None, None]))
    for record in output.records:
        assert record["warnings"] == [
            f"the gradcam map at layer 'dead' is all zero: {diagnosis.DEAD}",
            f"the eigencam map at layer 'dead' is all zero: {diagnosis.DEAD}",
        ]


def test_a_method_is_a_context_manager_that_lets_go_of_the_model():
    model, to_input = torch_model()
    x = to_input(np.random.default_rng(0).uniform(0.1, 1.0, size=(2, 4, 4, 2)).astype(np.float32))
    alive = weakref.ref(model)
    with gradcam.GradCAM(model, "features") as cam:
        ex = cam(x, target=THROUGH_BOTH)
    assert ex.maps.shape == (2, 4, 4)
    with pytest.raises(ValueError, match="this GradCAM is closed"):
        cam(x)
    del model
    assert alive() is None


# --- guided rules that meet no ReLU ---------------------------------------------------------------------------


def torch_activation_net(activation: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), activation, nn.Flatten(), nn.Linear(64, 3)).eval()


def keras_activation_net(activation: str):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", activation=activation)(inputs)
    return keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(h)))


def flax_activation_net(activation: str):
    pytest.importorskip("flax")
    import flax.linen as fnn
    import jax

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            h = getattr(jax.nn, activation)(fnn.Conv(4, (3, 3), padding="SAME")(x))
            return fnn.Dense(3)(h.reshape(len(h), -1))

    return Net(), Net().init(jax.random.PRNGKey(0), np.zeros((1, 4, 4, 2), np.float32))


ACTIVATION_NETS = {
    "torch": (lambda a: torch_activation_net({"relu": nn.ReLU(), "silu": nn.SiLU()}[a]), (0, 3, 1, 2)),
    "tensorflow": (keras_activation_net, None),
    "jax": (flax_activation_net, None),
}


@pytest.mark.parametrize("framework", list(ACTIVATION_NETS))
@pytest.mark.parametrize("method", [gradcam.GuidedBackprop, gradcam.Deconvnet])
def test_a_guided_rule_that_met_no_relu_says_so(framework, method):
    build, order = ACTIVATION_NETS[framework]
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 2)).astype(np.float32)
    x = x.transpose(order) if order else x
    ex, issued = explain(build("silu"), x, None, 0, method=method)
    plain = gradcam.backends.get_backend(build("silu")).input_gradient(build("silu"), x, 0, rule="plain").gradient
    np.testing.assert_allclose(ex.maps, plain, rtol=1e-5, atol=1e-7)  # the rule changed nothing
    assert [w.category for w in ex.warnings] == [NoReluWarning] and len(issued) == 1
    assert ex.warnings[0] == diagnosis.NO_RELU.format(rule=f"{method.name}'s {method.rule} rule")
    ex, issued = explain(build("relu"), x, None, 0, method=method)
    assert ex.warnings == () and issued == []


def test_guided_grad_cam_warns_for_both_its_parts():
    model = torch_activation_net(nn.SiLU())
    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    ex, _ = explain(model, x, "1", 0, method=gradcam.GuidedGradCAM)
    assert NoReluWarning in [w.category for w in ex.warnings]


# --- a probability explained instead of a logit ---------------------------------------------------------------


def keras_softmax_net(softmax: bool):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4, 4, 2))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    head = keras.layers.Dense(3, activation="softmax" if softmax else None)
    return keras.Model(inputs, head(keras.layers.Flatten()(h)))


def test_a_keras_softmax_is_left_out_unless_the_probability_is_asked_for():
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 2)).astype(np.float32)
    logit = gradcam.GradCAM(keras_softmax_net(False), "conv")(x, target=1)
    ex, issued = explain(keras_softmax_net(True), x, "conv", 1)
    np.testing.assert_allclose(ex.maps, logit.maps, atol=1e-6)
    assert ex.warnings == () and issued == []
    ex, issued = explain(keras_softmax_net(True), x, "conv", 1, probability=True)
    assert [w.category for w in ex.warnings] == [ProbabilityWarning] and len(issued) == 1
    assert ex.warnings[0].startswith("the explained score is a probability") and ex.warnings[0].images is None
    np.testing.assert_allclose(ex.logits.sum(axis=1), [1, 1], rtol=1e-5)  # the outputs explained are probabilities


def test_a_torch_probability_that_cannot_be_left_out_warns_with_every_explanation():
    class SoftmaxLast(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head, self.softmax = nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Softmax(dim=1)

        def forward(self, x):
            return self.softmax(self.head(self.body(x).mean(dim=(2, 3), keepdim=True)))

    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    cam = gradcam.GradCAM(SoftmaxLast(), "body")
    for _ in range(2):
        with warnings.catch_warnings(record=True) as issued:
            warnings.simplefilter("always")
            ex = cam(x, target=0)
        assert [w.category for w in ex.warnings][:1] == [ProbabilityWarning]
        assert ProbabilityWarning in [w.category for w in issued]


def test_layout_and_reshape_together_are_refused():
    with pytest.raises(ValueError, match="not both"):
        gradcam.GradCAM(TorchNet(), "features", layout="NHWC", reshape=lambda a: a)


def test_the_commands_keras_loader_builds_applications_with_logits():
    pytest.importorskip("keras")
    from gradcam.batch.loading import load_model

    loaded = load_model("keras:MobileNetV3Small")
    assert loaded.model.layers[-1].activation.__name__ == "linear"


def test_a_softmax_the_backend_cannot_see_is_caught_from_the_outputs():
    """A functional softmax in ``forward`` and a JAX head function: no module to take off, but every output row is
    >= 0 and sums to 1, so each explanation says that a probability was explained; the same nets without the
    softmax say nothing."""
    class FunctionalSoftmax(nn.Module):
        def __init__(self, softmax: bool):
            super().__init__()
            self.body, self.softmax = nn.Conv2d(2, 3, 3, padding=1), softmax

        def forward(self, x):
            scores = self.body(x).mean(dim=(2, 3))
            return torch.softmax(scores, dim=1) if self.softmax else scores

    x = torch.randn(2, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    for method in (gradcam.GradCAM, gradcam.GradCAMPlusPlus, gradcam.GuidedBackprop, gradcam.ScoreCAM):
        layer = None if method is gradcam.GuidedBackprop else "body"
        ex, issued = explain(FunctionalSoftmax(True), x, layer, 0, method=method)
        assert ex.warnings[0].category is ProbabilityWarning and ex.warnings[0].startswith(
            "the explained score is a probability: every row of the model's output is >= 0 and sums to 1"
        )
        assert ProbabilityWarning in [w.category for w in issued]
        ex, issued = explain(FunctionalSoftmax(False), x, layer, 0, method=method)
        assert ProbabilityWarning not in [w.category for w in ex.warnings]

    jax = pytest.importorskip("jax")
    w = np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32)

    def features(x):
        return jax.nn.relu(x)

    def head(a):
        return jax.nn.softmax(a.mean(axis=(1, 2)) @ w.T, axis=-1)

    xj = np.random.default_rng(2).standard_normal((2, 5, 5, 4)).astype(np.float32)
    ex, _ = explain((features, head), xj, None, 1)
    assert [w.category for w in ex.warnings] == [ProbabilityWarning]
    np.testing.assert_allclose(ex.logits.sum(axis=1), [1, 1], rtol=1e-5)
