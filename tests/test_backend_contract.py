"""The backend contract, one suite for every backend: ``gradcam.backends.contract.Backend`` and DESIGN.md sections
4, 5 and 7 (hand-worked numbers, targets, errors, the model left as found, the ReLU rules, layers, predict).

Each test runs once per framework on a ``Kit``: the backend module and small equivalent nets built by
``torch_nets``, ``keras_nets`` and ``jax_nets`` (seed 000's models, a small conv net, a net with a shared layer, a
token net, ...). Where the numbers are not worked by hand (``seeds.py``), the framework's own autograd on the model
split by hand is the independent reference. What only one framework has (hooks and in-place ops, Keras ``call``
patching, Flax paths, compiled-probe caches) is tested in ``test_backend_<name>.py``.
"""
from __future__ import annotations

import inspect
import re
from typing import Any

import numpy as np
import pytest
import seeds
from backend_kits import FRAMEWORKS, HAND_RELU_FORMS, TOKEN_IMAGE, Kit, embedded_net_everywhere, kit_for, model_layout

from gradcam.backends import get_backend
from gradcam.backends.common import vit_reshape
from gradcam.backends.contract import Backend
from gradcam.models import architecture, random_weights
from gradcam.reference.cams import grad_cam

TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the same ops in another order
RULES = tuple(seeds.HAND_GRADIENTS)  # plain, guided, deconvnet


@pytest.fixture(params=list(FRAMEWORKS))
def kit(request) -> Kit:
    return kit_for(request.param)


def nchw(kit: Kit, array: Any) -> np.ndarray:
    """An array in the kit's input layout, channels first (the probe's canonical layout)."""
    return np.moveaxis(np.asarray(array), kit.channel_axis, 1)


def own_layout(kit: Kit, array: np.ndarray) -> np.ndarray:
    """A channels-first array in the kit's input layout."""
    return model_layout(array, kit.channel_axis)


def assert_same(kit: Kit, actual: np.ndarray, expected: np.ndarray) -> None:
    """The same bits where the framework runs the same kernels for both (eager torch); equal to float32 rounding
    where a compiled graph may fuse the same ops differently for another request (tf.function, XLA)."""
    if kit.exact:
        np.testing.assert_array_equal(actual, expected)
    else:
        np.testing.assert_allclose(actual, expected, **TOL)


def contrast(out: Any) -> Any:
    """A callable target in the framework's own ops: class 1's score minus class 0's."""
    return out[:, 1] - out[:, 0]


def identity(out: Any) -> Any:
    """A callable target that wrongly returns the whole output."""
    return out


# --- the contract itself -------------------------------------------------------------------------


def test_backend_module_has_every_contract_member_with_the_same_parameters(kit):
    module = kit.backend
    assert isinstance(module, Backend)
    assert module.NAME == kit.name
    members = [*Backend.__annotations__, *(n for n, v in vars(Backend).items() if callable(v) and n[0] != "_")]
    assert "NAME" in members and "predict_ablated" in members and "input_channel_axis" in members
    for name in members:
        assert hasattr(module, name), name
        assert name in module.__all__, name
        if name in Backend.__annotations__:
            continue
        expected = list(inspect.signature(getattr(Backend, name)).parameters.values())[1:]  # without self
        actual = list(inspect.signature(getattr(module, name)).parameters.values())
        assert [(p.name, p.default) for p in actual] == [(p.name, p.default) for p in expected], name


def test_input_channel_axis_is_the_models_own(kit):
    assert kit.backend.input_channel_axis(kit.cnn) == kit.channel_axis
    for model in kit.seeds.values():
        assert kit.backend.input_channel_axis(model) == kit.channel_axis


def test_is_model_get_backend_and_to_numpy(kit):
    backend = kit.backend
    assert backend.is_model(kit.cnn) and not backend.is_model(object())
    assert get_backend(kit.cnn) is backend
    x = kit.images(2)
    as_numpy = backend.to_numpy(kit.tensor(x))
    assert as_numpy.dtype == np.float32
    np.testing.assert_array_equal(as_numpy, x)


# --- seed 000, worked by hand ----------------------------------------------------------------------


def test_seed_000_gradients_are_alpha_everywhere_and_grad_cam_is_L_exactly(kit):
    x = own_layout(kit, seeds.SEED_A[None])
    for kind, model in kit.seeds.items():
        p = kit.backend.probe(model, x, "features", target=0)
        A, G = p.activations["features"], p.gradients["features"]
        assert A.dtype == G.dtype == np.float32, kind
        np.testing.assert_array_equal(A, seeds.SEED_A[None], err_msg=kind)
        np.testing.assert_array_equal(G, np.broadcast_to(seeds.SEED_ALPHA[None, :, None, None], (1, 2, 3, 3)), kind)
        # Grad-CAM by hand from what the backend handed out, and the reference formula, give the seed's L
        alpha = G[0].mean(axis=(1, 2), dtype=np.float64)
        np.testing.assert_allclose(np.maximum(np.tensordot(alpha, A[0], axes=1), 0), seeds.SEED_L, atol=1e-6)
        np.testing.assert_allclose(grad_cam(A, G)[0], seeds.SEED_L, atol=1e-6)
        np.testing.assert_allclose(p.scores, [seeds.SEED_SCORE], atol=1e-6)
        assert p.layers == ["features"] and p.input_size == (3, 3), kind
        assert p.targets.tolist() == [0] and p.logits.shape == (1, 1), kind


def test_seed_000_second_example_dy_dO_is_W_and_dense_weight_is_W(kit):
    O = own_layout(kit, np.arange(1, 5, dtype=np.float32).reshape(1, 1, 2, 2))
    p = kit.backend.probe(kit.seed_dense, O, "features", target=0)
    np.testing.assert_array_equal(p.gradients["features"][0, 0], seeds.SEED_DY_DO)
    assert p.gradients["features"][0, 0].mean() == seeds.SEED_DENSE_ALPHA
    assert p.scores[0] == 2 + 4  # O12 + O22
    W = kit.backend.dense_weight(kit.seed_dense, "head")
    assert W.dtype == np.float32 and W.shape == (1, 4)
    np.testing.assert_array_equal(W, seeds.SEED_W[None])


def test_predict_ablated_on_the_seed_example_drops_one_channels_share(kit):
    # y = alpha_1 sum A1 + alpha_2 sum A2 = 14/3 - 14/3; without A1: -14/3; without A2: 14/3
    x = own_layout(kit, np.stack([seeds.SEED_A] * 3))
    for kind, model in kit.seeds.items():
        outputs = kit.backend.predict_ablated(model, x, "features", [-1, 0, 1])
        np.testing.assert_allclose(outputs, [[0.0], [-14 / 3], [14 / 3]], atol=1e-5, err_msg=kind)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize(
    "framework, form", [(framework, form) for framework, forms in HAND_RELU_FORMS.items() for form in forms]
)
def test_relu_rules_on_the_hand_example_for_every_way_of_writing_relu(framework, form, rule):
    kit = kit_for(framework)
    assert sorted(kit.hand_relu) == sorted(HAND_RELU_FORMS[framework])  # no form of the kit goes untested
    result = kit.backend.input_gradient(kit.hand_relu[form](), seeds.HAND_X, target=0, rule=rule)
    assert result.gradient.dtype == np.float32
    assert result.gradient.shape == nchw(kit, seeds.HAND_X).shape
    assert result.gradient.ravel().tolist() == seeds.HAND_GRADIENTS[rule]
    assert result.scores.tolist() == [seeds.HAND_SCORE] and result.probe is None
    assert result.relu_count == (-1 if rule == "plain" else 2)  # two ReLUs rewritten; the plain rule counts none


# --- probes against the framework's own autograd ----------------------------------------------------


def test_probe_equals_the_model_split_by_hand(kit):
    x = kit.images(2)
    p = kit.backend.probe(kit.cnn, x, kit.default)
    activation, head = kit.split(x)
    logits = kit.logits(kit.cnn, x)
    scores, grad = kit.gradient_by_hand(head, activation, p.targets)
    np.testing.assert_array_equal(p.targets, logits.argmax(axis=1))
    np.testing.assert_allclose(p.logits, logits, **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)
    np.testing.assert_allclose(p.activations[kit.default], nchw(kit, activation), **TOL)
    np.testing.assert_allclose(p.gradients[kit.default], nchw(kit, grad), **TOL)
    assert p.layers == [kit.default] and p.input_size == tuple(int(n) for n in np.delete(x.shape, kit.channel_axis)[1:])


def test_plain_input_gradient_equals_the_frameworks_autograd(kit):
    x = kit.images(2)
    result = kit.backend.input_gradient(kit.cnn, x, target=[1, 2])
    np.testing.assert_allclose(result.gradient, nchw(kit, kit.input_gradient_by_hand(x, [1, 2])), **TOL)
    assert result.targets.tolist() == [1, 2]


def test_several_layers_in_one_call_equal_one_at_a_time(kit):
    x = kit.images(2)
    together = kit.backend.probe(kit.cnn, x, kit.layers, target=4)
    assert together.layers == kit.layers
    for name in kit.layers:
        alone = kit.backend.probe(kit.cnn, x, name, target=4)
        assert_same(kit, together.activations[name], alone.activations[name])
        np.testing.assert_allclose(together.gradients[name], alone.gradients[name], **TOL)


def test_batch_equals_one_image_at_a_time(kit):
    x = kit.images(3)
    for targets in (None, [0, kit.classes - 1, 2]):
        batch = kit.backend.probe(kit.cnn, x, kit.layers, target=targets)
        for i in range(3):
            one = kit.backend.probe(kit.cnn, x[i : i + 1], kit.layers, target=None if targets is None else targets[i])
            for name in kit.layers:
                np.testing.assert_allclose(batch.activations[name][i : i + 1], one.activations[name], **TOL)
                np.testing.assert_allclose(batch.gradients[name][i : i + 1], one.gradients[name], **TOL)
            assert batch.targets[i] == one.targets[0]
            np.testing.assert_allclose(batch.scores[i], one.scores[0], **TOL)


def test_shared_layer_is_taken_at_its_last_call(kit):
    net = kit.shared
    p = kit.backend.probe(net.model, net.x, net.layer, target=0)
    second, head = kit.split_shared(net.x)
    scores, grad = kit.gradient_by_hand(head, second, [0] * len(net.x))
    np.testing.assert_allclose(p.activations[net.layer], nchw(kit, second), **TOL)
    np.testing.assert_allclose(p.gradients[net.layer], nchw(kit, grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)


def test_token_layer_with_reshape_gives_the_grid_and_its_exact_gradient(kit):
    net = kit.tokens

    def grid(tokens):
        return vit_reshape(tokens, class_tokens=0)

    p = kit.backend.probe(net.model, net.x, net.layer, target=2, reshape=grid)
    np.testing.assert_array_equal(p.activations[net.layer], TOKEN_IMAGE)
    expected = np.zeros((1, 3, 4, 4), np.float32)
    expected[:, 2] = 1 / 16  # the head averages 16 tokens
    np.testing.assert_array_equal(p.gradients[net.layer], expected)
    assert p.layouts == {net.layer: "reshape"}
    # the layout by name, or inferred: 16 tokens of a 4x4 input are a 4x4 grid with no special token
    for layout in (None, "NTC", "NTC:0:4x4"):
        named = kit.backend.probe(net.model, net.x, net.layer, target=2, reshape=layout)
        np.testing.assert_array_equal(named.activations[net.layer], TOKEN_IMAGE)
        np.testing.assert_array_equal(named.gradients[net.layer], expected)
        assert named.layouts[net.layer] == ("NTC:0:4x4" if layout == "NTC:0:4x4" else "NTC")
    with pytest.raises(ValueError, match="layout 'NCHW' needs a 4-D output"):
        kit.backend.probe(net.model, net.x, net.layer, reshape="NCHW")
    with pytest.raises(ValueError, match="15 tokens after 1 special token.*not form a square grid"):
        kit.backend.probe(net.model, net.x, net.layer, reshape="NTC:1")
    with pytest.raises(ValueError, match="unknown layout 'CHW'"):
        kit.backend.probe(net.model, net.x, net.layer, reshape="CHW")


def test_maps_are_read_in_the_models_own_layout_and_the_layout_is_recorded(kit):
    x = kit.images(2)
    native = "NCHW" if kit.channel_axis == 1 else "NHWC"
    inferred = kit.backend.probe(kit.cnn, x, kit.layers, target=1)
    named = kit.backend.probe(kit.cnn, x, kit.layers, target=1, reshape=native)
    assert inferred.layouts == named.layouts == {name: native for name in kit.layers}
    for name in kit.layers:
        assert_same(kit, named.activations[name], inferred.activations[name])
        assert_same(kit, named.gradients[name], inferred.gradients[name])


def test_layer_choice_names_the_default_layer_its_layout_and_why(kit):
    x = kit.images(2)
    chosen = kit.backend.layer_choice(kit.cnn, x)
    assert chosen.name == kit.default == kit.backend.default_layer(kit.cnn, x)
    assert chosen.layout == ("NCHW" if kit.channel_axis == 1 else "NHWC")
    assert "the score depends on" in chosen.why
    assert chosen.layouts[kit.default] == chosen.layout
    assert chosen.layouts[kit.non_spatial] in ("-", "the model's output")  # torch's fc is the last layer to run


def test_explained_model_of_a_plain_model_explains_the_same_numbers(kit):
    x = kit.images(2)
    explained, notes = kit.backend.explained_model(kit.cnn)
    assert notes == ()
    assert kit.backend.layer_names(explained) == kit.backend.layer_names(kit.cnn)
    first, second = (kit.backend.probe(m, x, kit.default, target=2) for m in (kit.cnn, explained))
    np.testing.assert_allclose(second.gradients[kit.default], first.gradients[kit.default], **TOL)
    np.testing.assert_allclose(second.scores, first.scores, **TOL)


# --- targets ---------------------------------------------------------------------------------------


def test_targets_none_int_one_per_image_and_callable_in_the_frameworks_ops(kit):
    backend, x = kit.backend, kit.images(3)
    logits = kit.logits(kit.cnn, x)
    top = backend.probe(kit.cnn, x, kit.default)
    assert top.targets.tolist() == logits.argmax(1).tolist()
    np.testing.assert_allclose(top.scores, logits.max(1), **TOL)
    np.testing.assert_allclose(top.logits, logits, **TOL)
    fixed = backend.probe(kit.cnn, x, kit.default, target=4)
    assert fixed.targets.tolist() == [4, 4, 4]
    np.testing.assert_allclose(fixed.scores, logits[:, 4], **TOL)
    per_image = [0, kit.classes - 1, 2]
    listed = backend.probe(kit.cnn, x, kit.default, target=per_image)
    assert listed.targets.tolist() == per_image
    np.testing.assert_allclose(listed.scores, logits[[0, 1, 2], per_image], **TOL)
    difference = backend.probe(kit.cnn, x, kit.default, target=contrast)
    assert difference.targets.tolist() == [-1, -1, -1]
    np.testing.assert_allclose(difference.scores, logits[:, 1] - logits[:, 0], **TOL)
    # the gradient of a difference of scores is the difference of the gradients
    g1 = backend.probe(kit.cnn, x, kit.default, target=1).gradients[kit.default]
    g0 = backend.probe(kit.cnn, x, kit.default, target=0).gradients[kit.default]
    np.testing.assert_allclose(difference.gradients[kit.default], g1 - g0, **TOL)


def test_callable_target_on_a_non_class_output(kit):
    net = kit.segmenter
    result = kit.backend.probe(net.model, net.x, net.layer, target=kit.region)
    assert result.logits is None and result.targets.tolist() == [-1, -1]
    G = result.gradients[net.layer]
    assert G.shape == (2, 4, 8, 8)
    assert (G[:, :, 0, :] == 0).all() and np.abs(G[:, :, 2:5, 2:5]).max() > 0  # the region's rows only
    with pytest.raises(ValueError, match="callable"):
        kit.backend.probe(net.model, net.x, net.layer)


def test_bad_targets_give_the_valid_range_and_the_count(kit):
    backend, x = kit.backend, kit.images(2)
    before = kit.state(kit.cnn)
    with pytest.raises(ValueError, match=rf"valid classes are 0\.\.{kit.classes - 1}"):
        backend.probe(kit.cnn, x, kit.default, target=kit.classes)
    with pytest.raises(ValueError, match="got 3 targets for a batch of 2 images"):
        backend.probe(kit.cnn, x, kit.default, target=[1, 2, 3])
    with pytest.raises(ValueError, match=r"shape \(2,\), one score per image"):
        backend.probe(kit.cnn, x, kit.default, target=identity)
    with pytest.raises(ValueError, match="must be integers"):
        backend.probe(kit.cnn, x, kit.default, target=1.5)
    assert kit.state(kit.cnn) == before


def test_targets_are_checked_before_the_model_runs(kit):
    net, backend = kit.counting, kit.backend
    runs = kit.runs(net.model)
    with pytest.raises(ValueError, match="got 3 targets for a batch of 2 images"):
        backend.probe(net.model, net.x, net.layer, target=[0, 1, 0])
    with pytest.raises(ValueError, match="got 3 targets for a batch of 2 images"):
        backend.input_gradient(net.model, net.x, target=[0, 1, 0], rule="guided")
    with pytest.raises(ValueError, match="must be integers"):
        backend.probe(net.model, net.x, net.layer, target=1.5)
    assert kit.runs(net.model) == runs
    if kit.classes_known_before_forward:
        # the number of classes comes from an abstract trace (or an earlier call), not from running the model
        with pytest.raises(ValueError, match=r"valid classes are 0\.\.1"):
            backend.probe(net.model, net.x, net.layer, target=2)
        assert kit.runs(net.model) == runs
    backend.probe(net.model, net.x, net.layer, target=1)
    assert kit.runs(net.model) > runs  # the count does count the forwards


# --- bad input ---------------------------------------------------------------------------------------


def test_unknown_layer_names_the_closest(kit):
    for spec, key_words in kit.unknown_layers:
        with pytest.raises(KeyError) as info:
            kit.backend.probe(kit.cnn, kit.images(1), spec)
        for words in key_words:
            assert re.search(words, str(info.value)), (spec, words, str(info.value))
    for model in kit.seeds.values():
        with pytest.raises(KeyError, match="closest: features"):
            kit.backend.probe(model, own_layout(kit, seeds.SEED_A[None]), "feature")


def test_probe_needs_at_least_one_layer(kit):
    for layers in (None, []):
        with pytest.raises(ValueError, match="at least one layer"):
            kit.backend.probe(kit.cnn, kit.images(1), layers)


def test_non_spatial_layer_asks_for_reshape(kit):
    before = kit.state(kit.cnn)
    with pytest.raises(ValueError, match="not a spatial map.*reshape="):
        kit.backend.probe(kit.cnn, kit.images(1), kit.non_spatial)
    assert kit.state(kit.cnn) == before


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_input_is_refused(kit, bad):
    x = kit.images(2)
    x[1].flat[40] = bad
    for given in (x, kit.tensor(x)):
        with pytest.raises(ValueError, match="NaN or Inf"):
            kit.backend.probe(kit.cnn, given, kit.default)
        with pytest.raises(ValueError, match="NaN or Inf"):
            kit.backend.input_gradient(kit.cnn, given, rule="guided")


def test_single_image_without_batch_dimension_hints_x_none(kit):
    with pytest.raises(ValueError, match=rf"\({kit.layout}\).*add the batch dimension: x\[None\]"):
        kit.backend.probe(kit.cnn, kit.images(1)[0], kit.default)
    with pytest.raises(ValueError, match="got shape"):
        kit.backend.predict(kit.cnn, np.zeros((2, 3), np.float32))


def test_unknown_rule_is_refused(kit):
    with pytest.raises(ValueError, match="unknown rule"):
        kit.backend.input_gradient(kit.cnn, kit.images(1), rule="smooth")


def test_model_the_backend_cannot_explain_is_refused(kit):
    model, why = kit.not_a_model
    with pytest.raises(TypeError, match=why):
        kit.backend.probe(model, kit.images(1), kit.default)


@pytest.mark.parametrize("framework, word", [("tensorflow", "Keras"), ("jax", "JAX")])
def test_torch_tensor_is_refused_with_the_layout_hint(framework, word):
    torch = pytest.importorskip("torch")
    kit = kit_for(framework)
    with pytest.raises(TypeError, match=rf"torch tensor was given to a {word} model.*x\.permute\(0, 2, 3, 1\)"):
        kit.backend.probe(kit.cnn, torch.zeros(1, 3, 16, 16), kit.default)


# --- the model is left as found -------------------------------------------------------------------------


@pytest.mark.parametrize("rule", [None, *RULES])
def test_model_left_as_found_after_an_exception(kit, rule):
    x = kit.images(2)
    first = kit.backend.probe(kit.cnn, x, kit.default, target=1)
    net = kit.exploding
    before = kit.state(net.model)
    with pytest.raises(RuntimeError, match="boom"):
        if rule is None:
            kit.backend.probe(net.model, net.x, net.layer)
        else:
            kit.backend.input_gradient(net.model, net.x, rule=rule, layers=net.layer)
    assert kit.state(net.model) == before
    # and the next call gives what it gave before
    again = kit.backend.probe(kit.cnn, x, kit.default, target=1)
    np.testing.assert_array_equal(again.gradients[kit.default], first.gradients[kit.default])


def test_relu_rules_leave_the_model_and_its_plain_gradient_as_found(kit):
    x = kit.images(2)
    before = kit.state(kit.cnn)
    plain = kit.backend.input_gradient(kit.cnn, x, target=0)
    kit.backend.input_gradient(kit.cnn, x, target=0, rule="guided", layers=kit.default)
    kit.backend.input_gradient(kit.cnn, x, target=0, rule="deconvnet")
    assert kit.state(kit.cnn) == before
    np.testing.assert_array_equal(kit.backend.input_gradient(kit.cnn, x, target=0).gradient, plain.gradient)


# --- Guided Grad-CAM: one pass, the layers keep their plain gradients ---------------------------------


@pytest.mark.parametrize("rule", RULES)
def test_guided_grad_cam_layers_keep_plain_gradients(kit, rule):
    x, layers = kit.images(2), kit.layers[:2]
    combined = kit.backend.input_gradient(kit.cnn, x, target=3, rule=rule, layers=layers)
    alone = kit.backend.input_gradient(kit.cnn, x, target=3, rule=rule)
    plain = kit.backend.probe(kit.cnn, x, layers, target=3)
    assert alone.probe is None and combined.probe.layers == layers
    assert combined.gradient.shape == nchw(kit, x).shape
    assert_same(kit, combined.gradient, alone.gradient)
    for name in layers:
        assert_same(kit, combined.probe.activations[name], plain.activations[name])
        np.testing.assert_allclose(combined.probe.gradients[name], plain.gradients[name], **TOL)
    if rule != "plain":
        plain_at_input = kit.backend.input_gradient(kit.cnn, x, target=3).gradient
        assert not np.allclose(alone.gradient, plain_at_input, atol=1e-4)


# --- layers, predict, dense weights -----------------------------------------------------------------


def test_layer_names_shapes_and_default_layer(kit):
    backend, listing, x = kit.backend, kit.listing, kit.images(2)
    names = backend.layer_names(kit.cnn)
    assert names[: len(listing.first)] == listing.first
    assert set(listing.contains) <= set(names) and "" not in names
    shapes = backend.layer_shapes(kit.cnn, x)
    order = [name for name, _ in shapes]
    assert [name for name in order if name in listing.order] == listing.order
    assert {name: tuple(shape) for name, shape in shapes if name in listing.shapes} == listing.shapes
    if listing.complete:
        assert sorted(names) == sorted(listing.contains) and order == listing.order
    assert backend.default_layer(kit.cnn, x) == kit.default
    assert backend.default_layer(kit.other.model, kit.other.x) == kit.other.layer


def test_default_layer_refuses_a_model_without_a_spatial_map(kit):
    with pytest.raises(ValueError, match="spatial"):
        kit.backend.default_layer(kit.flat.model, kit.flat.x)


def test_predict_in_padded_chunks_equals_one_call(kit):
    x = kit.images(5)
    whole = kit.backend.predict(kit.cnn, x)
    assert whole.dtype == np.float32 and whole.shape == (5, kit.classes)
    np.testing.assert_allclose(whole, kit.logits(kit.cnn, x), **TOL)
    np.testing.assert_allclose(kit.backend.predict(kit.cnn, kit.tensor(x)), whole, **TOL)
    chunked = kit.backend.predict(kit.cnn, x, batch_size=2)
    assert chunked.dtype == np.float32 and chunked.shape == (5, kit.classes)
    np.testing.assert_allclose(chunked, whole, **TOL)


def test_predict_ablated_zeroes_one_channel_per_image(kit):
    x = kit.images(2)
    outputs = kit.backend.predict_ablated(kit.cnn, x, kit.default, [-1, 3])
    activation, head = kit.split(x)
    A = nchw(kit, activation).copy()
    A[1, 3] = 0
    np.testing.assert_allclose(outputs, kit.numpy(head(kit.tensor(own_layout(kit, A)))), **TOL)
    np.testing.assert_allclose(outputs[0], kit.backend.predict(kit.cnn, x)[0], **TOL)
    net = kit.shared
    with pytest.raises(ValueError, match="runs more than once in one forward"):
        kit.backend.predict_ablated(net.model, net.x[:1], net.layer, [0])


def test_predict_ablated_zeroes_a_channel_of_tokens_not_a_token(kit):
    # the token net's class c is the mean of channel c over its 16 tokens: without channel 2, class 2 scores 0
    net = kit.tokens
    full = kit.backend.predict(net.model, net.x)
    expected = full.copy()
    expected[:, 2] = 0
    for layout in (None, "NTC"):
        np.testing.assert_allclose(kit.backend.predict_ablated(net.model, net.x, net.layer, [2], layout), expected,
                                   atol=1e-6)
    with pytest.raises(ValueError, match="needs its layout by name"):
        kit.backend.predict_ablated(net.model, net.x, net.layer, [2], vit_reshape)


def test_layer_biases_are_batch_norms_inference_bias_and_the_dense_bias(kit):
    # the embedded model's architecture: six conv -> batch norm pairs (the convs have no bias) and one dense layer
    model, x = embedded_net_everywhere(4, 0)[kit.name]
    weights = {name: np.asarray(value, np.float64) for name, value in random_weights(seed=4).items()}
    expected = []
    for _, bn, *_ in architecture.conv_batchnorm_pairs():
        gamma, beta, mean, var = (weights[f"{bn}.{field}"] for field in architecture.BN_FIELDS)
        expected.append(beta - gamma * mean / np.sqrt(var + architecture.BN_EPSILON))
    expected.append(weights["fc.bias"])
    found = kit.backend.layer_biases(model, x)
    assert all(b.dtype == np.float32 for _, b in found)
    assert set(name for name, _ in found) <= set(kit.backend.layer_names(model))
    assert len(found) == len(expected)
    for (_, bias), value in zip(found, expected, strict=True):
        np.testing.assert_allclose(bias, value, rtol=1e-6, atol=1e-7)


def test_dense_weight_is_outputs_by_inputs(kit):
    W = kit.backend.dense_weight(kit.cnn, kit.dense)
    assert W.dtype == np.float32 and W.shape[0] == kit.classes
    np.testing.assert_array_equal(W, kit.dense_by_hand())
    layer, key_words = kit.not_dense
    with pytest.raises(ValueError, match=key_words):
        kit.backend.dense_weight(kit.cnn, layer)
