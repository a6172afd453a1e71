"""The TensorFlow/Keras backend against hand-worked numbers and independent computations."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from gradcam.backends import common  # noqa: E402
from gradcam.backends import tensorflow as backend  # noqa: E402

import keras_nets as nets  # noqa: E402

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


def gradient_by_hand(head, activation: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, d sum_n y_n / d A)`` for ``y = head(A)[n, target_n]``, eagerly, from the layer on."""
    a = tf.constant(activation)
    with tf.GradientTape() as tape:
        tape.watch(a)
        outputs = head(a)
        scores = tf.gather(outputs, targets, batch_dims=1)
        total = tf.reduce_sum(scores)
    return scores.numpy(), tape.gradient(total, a).numpy()


# --- seed 000 ----------------------------------------------------------------------------------


def test_seed_example_gradient_is_alpha_everywhere():
    model = nets.seed_model()
    x = nets.SEED_A.transpose(1, 2, 0)[None]  # A as one NHWC image
    p = backend.probe(model, x, "features", target=0)
    np.testing.assert_array_equal(p.activations["features"][0], nets.SEED_A)
    G = p.gradients["features"][0]
    np.testing.assert_array_equal(G, np.broadcast_to(nets.SEED_ALPHA[:, None, None], (2, 3, 3)))
    alpha = G.mean(axis=(1, 2), dtype=np.float64)
    L = np.maximum(np.tensordot(alpha, p.activations["features"][0], axes=1), 0)
    np.testing.assert_allclose(L, nets.SEED_L, atol=1e-6)
    # y = 14/3 - 2/3 * 7 = 0 (sum A1 = 14, sum A2 = 7)
    np.testing.assert_allclose(p.scores, [0.0], atol=1e-6)


def test_seed_second_example_dense_weights():
    model = nets.seed_dense_model()
    O = np.arange(1, 5, dtype=np.float32).reshape(1, 2, 2, 1)
    p = backend.probe(model, O, "features", target=0)
    np.testing.assert_array_equal(p.gradients["features"][0, 0], nets.SEED_DY_DO)
    assert p.gradients["features"][0, 0].mean() == 0.5
    assert p.scores[0] == 2 + 4  # O12 + O22


# --- probes against independent computations ---------------------------------------------------


def test_functional_probe_equals_split_model_by_hand(functional):
    model = functional
    x = nets.images(2)
    p = backend.probe(model, x, "conv3")
    conv3 = model.get_layer("conv3")
    activation = keras.Model(model.inputs[0], conv3.output)(x, training=False).numpy()

    def head(a):
        return model.get_layer("fc2")(model.get_layer("fc1")(model.get_layer("gap")(a)))

    scores, grad = gradient_by_hand(head, activation, p.targets)
    logits = model(x, training=False).numpy()
    np.testing.assert_array_equal(p.targets, logits.argmax(axis=1))
    np.testing.assert_allclose(p.logits, logits, **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)
    np.testing.assert_allclose(p.activations["conv3"], nchw(activation), **TOL)
    np.testing.assert_allclose(p.gradients["conv3"], nchw(grad), **TOL)
    assert p.input_size == (16, 16) and p.layers == ["conv3"]


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

    scores, grad = gradient_by_hand(head, activation.numpy(), np.array([0, 3]))
    np.testing.assert_allclose(p.gradients["relu2"], nchw(grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)
    np.testing.assert_array_equal(p.targets, [0, 3])


def test_subclassed_probe_equals_hand_computation():
    model = nets.SubclassedCNN()
    x = nets.images(2)
    p = backend.probe(model, x, model.conv2, target=2)
    activation = model.conv2(model.conv1(x)).numpy()
    scores, grad = gradient_by_hand(lambda a: model.fc(model.gap(model.relu(a))), activation, np.array([2, 2]))
    assert p.layers == ["conv2"]
    np.testing.assert_allclose(p.activations["conv2"], nchw(activation), **TOL)
    np.testing.assert_allclose(p.gradients["conv2"], nchw(grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)


def test_several_layers_in_one_call_equal_one_at_a_time(functional):
    model = functional
    x = nets.images(2)
    layers = ["backbone/relu1", "backbone", "conv3"]
    together = backend.probe(model, x, layers, target=4)
    assert together.layers == layers
    for name in layers:
        alone = backend.probe(model, x, name, target=4)
        np.testing.assert_allclose(together.activations[name], alone.activations[name], **TOL)
        np.testing.assert_allclose(together.gradients[name], alone.gradients[name], **TOL)


def test_batch_equals_one_image_at_a_time(functional):
    model = functional
    x = nets.images(2)
    batch = backend.probe(model, x, "conv3", target=[0, 4])
    for i, t in enumerate([0, 4]):
        one = backend.probe(model, x[i : i + 1], "conv3", target=t)
        np.testing.assert_allclose(batch.gradients["conv3"][i], one.gradients["conv3"][0], **TOL)
        np.testing.assert_allclose(batch.scores[i], one.scores[0], **TOL)


def test_shared_layer_is_taken_at_its_last_call():
    model = nets.SharedReluCNN()
    x = nets.images(2, size=8)
    p = backend.probe(model, x, "relu", target=0)
    second = model.relu(model.conv2(model.relu(model.conv1(x)))).numpy()
    scores, grad = gradient_by_hand(lambda a: model.fc(model.gap(a)), second, np.array([0, 0]))
    np.testing.assert_allclose(p.activations["relu"], nchw(second), **TOL)
    np.testing.assert_allclose(p.gradients["relu"], nchw(grad), **TOL)


def test_callable_target_in_tf_ops(sequential):
    model = sequential
    x = nets.images(2)
    p = backend.probe(model, x, "conv3", target=lambda out: out[:, 1] - out[:, 2])
    q1 = backend.probe(model, x, "conv3", target=1)
    q2 = backend.probe(model, x, "conv3", target=2)
    np.testing.assert_array_equal(p.targets, [-1, -1])
    np.testing.assert_allclose(p.scores, q1.scores - q2.scores, **TOL)
    np.testing.assert_allclose(p.gradients["conv3"], q1.gradients["conv3"] - q2.gradients["conv3"], **TOL)


def test_token_layer_with_reshape_matches_its_grid():
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
    with pytest.raises(ValueError, match="not a spatial map"):
        backend.probe(model, x, "tokens")


# --- guided backprop and deconvnet -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["relu_layer", "activation_layer", "conv_activation", "dense_activation"])
@pytest.mark.parametrize("rule", ["plain", "guided", "deconvnet"])
def test_relu_rules_on_the_hand_example(kind, rule):
    model = nets.hand_relu_model(kind)
    result = backend.input_gradient(model, nets.HAND_X, target=0, rule=rule)
    assert result.gradient.shape == (1, 4, 1, 1)
    np.testing.assert_array_equal(result.gradient[0, :, 0, 0], nets.HAND_GRADIENTS[rule])
    assert result.scores[0] == 2 * 1 + -1 * 4


def test_guided_grad_cam_layers_keep_plain_gradients(functional):
    model = functional
    x = nets.images(2)
    plain = backend.probe(model, x, ["backbone", "conv3"], target=3)
    guided = backend.input_gradient(model, x, target=3, rule="guided", layers=["backbone", "conv3"])
    for name in ["backbone", "conv3"]:
        np.testing.assert_allclose(guided.probe.gradients[name], plain.gradients[name], **TOL)
        np.testing.assert_allclose(guided.probe.activations[name], plain.activations[name], **TOL)
    plain_input = backend.input_gradient(model, x, target=3)
    assert guided.gradient.shape == plain_input.gradient.shape == (2, 3, 16, 16)
    assert not np.allclose(guided.gradient, plain_input.gradient)


def test_plain_input_gradient_equals_tape(functional):
    model = functional
    x = nets.images(2)
    result = backend.input_gradient(model, x, target=[1, 2])
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(tf.gather(model(xt, training=False), [1, 2], batch_dims=1))
    np.testing.assert_allclose(result.gradient, nchw(tape.gradient(total, xt)), **TOL)


def layer_state(model) -> list[tuple[str, dict]]:
    """Each layer's own attributes that the backend may set: ``call`` and ``activation``."""
    paths = backend._layer_paths(model)
    return [(n, {k: vars(layer)[k] for k in ("call", "activation") if k in vars(layer)}) for n, layer in paths.items()]


def test_model_left_as_found_after_an_exception():
    model = nets.exploding_model()
    before = layer_state(model)
    x = nets.images(1, size=8)
    with pytest.raises(RuntimeError, match="boom"):
        backend.input_gradient(model, x, rule="guided", layers="relu")
    with pytest.raises(RuntimeError, match="boom"):
        backend.probe(model, x, "relu")
    assert layer_state(model) == before
    assert "call" not in vars(model.get_layer("relu"))
    assert model.get_layer("conv").activation is keras.activations.relu


def test_model_left_as_found_after_guided_and_its_plain_gradient_unchanged(sequential):
    model = sequential
    x = nets.images(2)
    before_state = layer_state(model)
    before = backend.input_gradient(model, x, target=0)
    backend.input_gradient(model, x, target=0, rule="guided", layers="conv3")
    backend.input_gradient(model, x, target=0, rule="deconvnet")
    after = backend.input_gradient(model, x, target=0)
    assert layer_state(model) == before_state
    np.testing.assert_array_equal(after.gradient, before.gradient)


def test_guided_refuses_relus_keras_cannot_see():
    model = nets.HiddenReluCNN()
    with pytest.raises(ValueError, match="1 ReLU op"):
        backend.input_gradient(model, nets.images(1, size=8), rule="guided")
    assert model.conv1.activation is keras.activations.relu


def test_guided_refuses_a_model_without_keras_relus():
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Flatten()(h)))
    with pytest.raises(ValueError, match="has none"):
        backend.input_gradient(model, nets.images(1, size=8), rule="guided")


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


# --- names, shapes, default layer, predict, dense weights -------------------------------------


def test_layer_names_shapes_and_default_layer(functional, sequential):
    model = functional
    x = nets.images(2)
    names = backend.layer_names(model)
    assert names[:3] == ["backbone", "backbone/conv1", "backbone/bn1"]
    shapes = dict(backend.layer_shapes(model, x))
    assert shapes["backbone/conv1"] == (2, 16, 16, 6) and shapes["conv3"] == (2, 8, 8, 8) and shapes["fc2"] == (2, 5)
    order = [name for name, _ in backend.layer_shapes(model, x)]
    assert order.index("backbone/out") < order.index("backbone") < order.index("conv3")
    assert backend.default_layer(model, x) == "conv3"
    assert backend.default_layer(sequential, x) == "relu3"
    p = backend.probe(model, x)
    assert p.layers == ["conv3"]


def test_predict_in_padded_chunks_equals_one_call(functional):
    model = functional
    x = nets.images(5)
    whole = backend.predict(model, x)
    np.testing.assert_allclose(whole, model(x, training=False).numpy(), **TOL)
    np.testing.assert_allclose(backend.predict(model, x, batch_size=2), whole, **TOL)
    assert whole.dtype == np.float32 and whole.shape == (5, 5)


def test_predict_ablated_zeroes_one_channel_per_image(functional):
    model = functional
    x = nets.images(2)
    outputs = backend.predict_ablated(model, x, "conv3", [-1, 3])
    A = keras.Model(model.inputs[0], model.get_layer("conv3").output)(x, training=False).numpy()
    A[1, :, :, 3] = 0

    def head(a):
        return model.get_layer("fc2")(model.get_layer("fc1")(model.get_layer("gap")(a))).numpy()

    np.testing.assert_allclose(outputs, head(A), **TOL)
    np.testing.assert_allclose(outputs[0], backend.predict(model, x)[0], **TOL)
    with pytest.raises(ValueError, match="runs 2 times"):
        backend.predict_ablated(nets.SharedReluCNN(), nets.images(1, size=8), "relu", [0])


def test_dense_weight_is_classes_by_inputs(functional):
    model = functional
    W = backend.dense_weight(model, "fc2")
    np.testing.assert_array_equal(W, np.asarray(model.get_layer("fc2").kernel).T)
    with pytest.raises(ValueError, match="not a Dense layer"):
        backend.dense_weight(model, "conv3")


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_layer_names_the_closest(functional):
    model = functional
    with pytest.raises(KeyError, match="closest: conv3"):
        backend.probe(model, nets.images(1), "conv33")


def test_layer_object_of_another_model_is_refused(functional):
    model = functional
    stranger = keras.layers.Conv2D(2, 3)
    with pytest.raises(ValueError, match="not part of this model"):
        backend.probe(model, nets.images(1), stranger)


def test_non_finite_input_is_refused(sequential):
    x = nets.images(1)
    x[0, 3, 4, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or Inf"):
        backend.probe(sequential, x)


def test_torch_tensor_is_refused_with_the_layout_hint(sequential):
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch tensor was given to a Keras model"):
        backend.probe(sequential, torch.zeros(1, 3, 16, 16))


def test_bad_targets_give_the_valid_range(sequential):
    model = sequential
    x = nets.images(2)
    with pytest.raises(ValueError, match=r"valid classes are 0\.\.4"):
        backend.probe(model, x, "conv3", target=7)
    with pytest.raises(ValueError, match="got 3 targets for a batch of 2"):
        backend.probe(model, x, "conv3", target=[1, 2, 3])
    with pytest.raises(ValueError, match="one score per image"):
        backend.probe(model, x, "conv3", target=lambda out: out)


def test_unknown_rule_and_non_keras_model(sequential):
    with pytest.raises(ValueError, match="unknown rule"):
        backend.input_gradient(sequential, nets.images(1), rule="smooth")
    with pytest.raises(TypeError, match="keras.Model"):
        backend.probe(object(), nets.images(1))
