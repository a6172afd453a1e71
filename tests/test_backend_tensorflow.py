"""What only the TensorFlow/Keras backend has: Sequential, functional (nested) and subclassed models, layers by
path or object, Keras ``call``/activation patching undone, ReLUs Keras cannot see, compiled probes (traced once,
the same numbers eagerly, cached no longer than the model lives), the input layout from Keras's configuration.

The contract that every backend keeps (hand-worked numbers, targets, errors, layer listings, predict) is tested
once for all in ``test_backend_contract.py``.
"""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

import keras_nets as nets

from gradcam.backends import common
from gradcam.backends import tensorflow as backend

TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the same ops in another order


# shared by the tests that only read them, so that their compiled probes are traced once
@pytest.fixture(scope="module")
def functional():
    return nets.functional_cnn()


@pytest.fixture(scope="module")
def sequential():
    return nets.sequential_cnn()


def nchw(a) -> np.ndarray:
    return np.asarray(a).transpose(0, 3, 1, 2)


# --- the ways Keras models are written -----------------------------------------------------------


def test_nested_layer_by_path_by_unique_name_and_by_object(functional):
    model = functional
    x = nets.images(2)
    inner = model.get_layer("backbone")
    by_path = backend.probe(model, x, "backbone/conv2", target=1)
    by_name = backend.probe(model, x, "conv2", target=1)
    by_object = backend.probe(model, x, inner.get_layer("conv2"), target=1)
    assert by_path.layers == by_name.layers == by_object.layers == ["backbone/conv2"]
    for other in (by_name, by_object):
        np.testing.assert_array_equal(other.gradients["backbone/conv2"], by_path.gradients["backbone/conv2"])
    # the residual add makes d y / d conv2 equal d y / d add (the add's gradient passes unchanged)
    add = backend.probe(model, x, "backbone/add", target=1)
    np.testing.assert_allclose(by_path.gradients["backbone/conv2"], add.gradients["backbone/add"], **TOL)


def test_layer_object_of_another_model_is_refused(functional):
    stranger = keras.layers.Conv2D(2, 3)
    with pytest.raises(ValueError, match="not part of this model"):
        backend.probe(functional, nets.images(1), stranger)


def test_sequential_probe_equals_hand_computation(sequential):
    model = sequential
    x = nets.images(2)
    p = backend.probe(model, x, "relu2", target=[0, 3])
    cut = model.layers.index(model.get_layer("relu2")) + 1
    activation = x
    for layer in model.layers[:cut]:
        activation = layer(activation)

    def head(a):
        for layer in model.layers[cut:]:
            a = layer(a)
        return a

    scores, grad = nets.gradient_by_hand(head, activation.numpy(), np.array([0, 3]))
    np.testing.assert_allclose(p.gradients["relu2"], nchw(grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)
    np.testing.assert_array_equal(p.targets, [0, 3])


def test_subclassed_probe_equals_hand_computation():
    model = nets.SubclassedCNN()
    x = nets.images(2)
    p = backend.probe(model, x, model.conv2, target=2)
    activation = model.conv2(model.conv1(x)).numpy()
    scores, grad = nets.gradient_by_hand(lambda a: model.fc(model.gap(model.relu(a))), activation, np.array([2, 2]))
    assert p.layers == ["conv2"]
    np.testing.assert_allclose(p.activations["conv2"], nchw(activation), **TOL)
    np.testing.assert_allclose(p.gradients["conv2"], nchw(grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)


def test_dense_token_layer_with_reshape_matches_its_grid():
    model = nets.token_model()
    x = nets.images(2)

    def grid(tokens):
        return common.vit_reshape(tokens, class_tokens=0)

    p = backend.probe(model, x, "tokens", target=1, reshape=grid)
    flat = backend.probe(model, x, "flatten_grid", target=1, reshape=grid)
    assert p.activations["tokens"].shape == (2, 8, 4, 4)
    # the dense token layer is per token: its activations are relu(W^T tokens + b) on the same grid
    dense = model.get_layer("tokens")
    A = np.einsum("nkhw,kc->nchw", flat.activations["flatten_grid"], np.asarray(dense.kernel))
    A = np.maximum(A + np.asarray(dense.bias)[None, :, None, None], 0)
    np.testing.assert_allclose(p.activations["tokens"], A, **TOL)
    # without reshape the 16 tokens of a 16x16 input read as a 4x4 grid without special tokens
    inferred = backend.probe(model, x, "tokens", target=1)
    assert inferred.layouts == {"tokens": "NTC"}
    np.testing.assert_allclose(inferred.gradients["tokens"], p.gradients["tokens"], **TOL)


def test_input_channel_axis_follows_the_image_data_format(sequential):
    previous = keras.config.image_data_format()
    try:
        keras.config.set_image_data_format("channels_last")
        assert backend.input_channel_axis(sequential) == -1
        keras.config.set_image_data_format("channels_first")
        assert backend.input_channel_axis(sequential) == 1
    finally:
        keras.config.set_image_data_format(previous)


# --- guided backprop: Keras activations patched and put back ----------------------------------------


def test_guided_puts_keras_activations_back_after_an_exception():
    model = nets.exploding_model()
    with pytest.raises(RuntimeError, match="boom"):
        backend.input_gradient(model, nets.images(1, size=8), rule="guided", layers="relu")
    assert "call" not in vars(model.get_layer("relu"))
    assert model.get_layer("conv").activation is keras.activations.relu


def test_guided_refuses_relus_keras_cannot_see():
    model = nets.HiddenReluCNN()
    with pytest.raises(ValueError, match="1 ReLU op"):
        backend.input_gradient(model, nets.images(1, size=8), rule="guided")
    assert model.conv1.activation is keras.activations.relu


def test_guided_on_a_model_without_relus_is_the_plain_gradient_and_says_so():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    x = nets.images(1, size=8)
    guided = backend.input_gradient(model, x, target=0, rule="guided")
    plain = backend.input_gradient(model, x, target=0)
    assert guided.relu_count == 0 and plain.relu_count == -1
    np.testing.assert_allclose(guided.gradient, plain.gradient, **TOL)
    assert backend.input_gradient(nets.sequential_cnn(), nets.images(1), rule="guided").relu_count == 3


# --- compilation: one trace per shape, eager mode the same ------------------------------------


def test_two_hundred_calls_trace_once():
    model = nets.sequential_cnn()
    x = nets.images(2)
    backend.probe(model, x, "conv3")
    traces = backend._trace_count(model)
    assert traces == 1
    for i in range(200):
        backend.probe(model, x, "conv3", target=i % 5)
    assert backend._trace_count(model) == traces


def test_eager_mode_gives_the_compiled_numbers(functional):
    model = functional
    x = nets.images(2)
    compiled = backend.input_gradient(model, x, target=1, rule="guided", layers="conv3")
    tf.config.run_functions_eagerly(True)
    try:
        eager = backend.input_gradient(model, x, target=1, rule="guided", layers="conv3")
    finally:
        tf.config.run_functions_eagerly(False)
    np.testing.assert_allclose(eager.gradient, compiled.gradient, **TOL)
    np.testing.assert_allclose(eager.probe.gradients["conv3"], compiled.probe.gradients["conv3"], **TOL)


def test_cache_dies_with_the_model():
    model = nets.sequential_cnn()
    backend.probe(model, nets.images(1), "conv3")
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None


# --- the model as explained: one output of several, the logit before a final softmax ------------------------


def _two_headed(final_activation: str | None = None) -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    return keras.Model(inputs, {
        "classes": keras.layers.Dense(3, activation=final_activation, name="classes")(pooled),
        "box": keras.layers.Dense(4, name="box")(pooled),
    })


def test_output_selects_one_entry_of_a_dict_output():
    model, x = _two_headed(), nets.images(2, size=8)
    explained, notes = backend.explained_model(model, output="classes")
    assert notes == ("explaining the model's output 'classes'",)
    assert backend.layer_names(explained) == backend.layer_names(model)
    p = backend.probe(explained, x, "conv", target=1)
    by_hand = backend.probe(model, x, "conv", target=lambda out: out["classes"][:, 1])
    np.testing.assert_allclose(p.gradients["conv"], by_hand.gradients["conv"], **TOL)
    assert p.targets.tolist() == [1, 1] and p.logits.shape == (2, 3)
    with pytest.raises(KeyError, match=r"no 'labels'; it has keys"):
        backend.probe(backend.explained_model(model, output="labels")[0], x, "conv", target=0)


def test_a_final_softmax_is_taken_off_for_the_call_only():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    logits_model = keras.Model(inputs, keras.layers.Dense(3, name="dense")(pooled))
    softmax_model = keras.Model(inputs, keras.layers.Softmax(name="softmax")(logits_model.output))
    x = nets.images(2, size=8)
    for model in (softmax_model, keras.Model(inputs, keras.layers.Activation("sigmoid")(logits_model.output))):
        explained, notes = backend.explained_model(model)
        assert "explaining the logit before the final" in notes[0]
        np.testing.assert_allclose(backend.predict(explained, x), backend.predict(logits_model, x), **TOL)
        as_given, notes = backend.explained_model(model, probability=True)
        assert as_given is model and notes[0].startswith("the explained score is a probability")
    np.testing.assert_allclose(backend.predict(softmax_model, x).sum(axis=1), 1.0, rtol=1e-5)  # left as found
