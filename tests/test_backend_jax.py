"""The JAX backend against hand-worked numbers and independent ``jax.vjp`` computations."""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
import jax.numpy as jnp  # noqa: E402

from gradcam.backends import common, get_backend  # noqa: E402
from gradcam.backends import jax as backend  # noqa: E402
import jax_nets as nets  # noqa: E402

TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the same ops in another order


def nchw(a) -> np.ndarray:
    return np.asarray(a).transpose(0, 3, 1, 2)


def gradient_by_hand(head, activation, targets) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, d sum_n y_n / d A)`` for ``y = head(A)[n, target_n]``, from the layer on."""

    def total(a):
        scores = jnp.take_along_axis(head(a), jnp.asarray(targets)[:, None], axis=1)[:, 0]
        return jnp.sum(scores), scores

    (_, scores), grad = jax.value_and_grad(total, has_aux=True)(jnp.asarray(activation))
    return np.asarray(scores), np.asarray(grad)


def split_small_net(module, variables, x):
    """``SmallNet`` split at ``conv3`` through its own ``features`` / ``head`` methods."""
    activation = module.apply(variables, x, method=nets.SmallNet.features)
    return activation, lambda a: module.apply(variables, a, method=nets.SmallNet.head)


# --- seed 000 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [nets.seed_pair, nets.seed_flax], ids=["pair", "flax"])
def test_seed_example_gradient_is_alpha_everywhere(make):
    p = backend.probe(make(), nets.SEED_X, "features", target=0)
    np.testing.assert_array_equal(p.activations["features"][0], nets.SEED_A)
    G = p.gradients["features"][0]
    np.testing.assert_array_equal(G, np.broadcast_to(nets.SEED_ALPHA[:, None, None], (2, 3, 3)))
    alpha = G.mean(axis=(1, 2), dtype=np.float64)
    L = np.maximum(np.tensordot(alpha, p.activations["features"][0], axes=1), 0)
    np.testing.assert_allclose(L, nets.SEED_L, atol=1e-6)
    # y = 14/3 - 2/3 * 7 = 0 (sum A1 = 14, sum A2 = 7)
    np.testing.assert_allclose(p.scores, [0.0], atol=1e-6)
    assert p.input_size == (3, 3) and p.layers == ["features"]


# --- probes against independent computations ---------------------------------------------------


def test_flax_probe_equals_split_model_by_hand():
    module, variables = nets.small_net()
    x = nets.images(2)
    p = backend.probe((module, variables), x, "conv3")
    activation, head = split_small_net(module, variables, x)
    logits = np.asarray(module.apply(variables, x))
    scores, grad = gradient_by_hand(head, activation, p.targets)
    np.testing.assert_array_equal(p.targets, logits.argmax(axis=1))
    np.testing.assert_allclose(p.logits, logits, **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)
    np.testing.assert_allclose(p.activations["conv3"], nchw(activation), **TOL)
    np.testing.assert_allclose(p.gradients["conv3"], nchw(grad), **TOL)
    assert p.input_size == (16, 16) and p.layers == ["conv3"]


def test_pair_probe_equals_vjp_by_hand():
    module, variables = nets.small_net()
    activation, head = split_small_net(module, variables, nets.images(2))

    def features(x):
        return module.apply(variables, x, method=nets.SmallNet.features)

    p = backend.probe(backend.JaxModel(features, head), nets.images(2), target=[1, 3])
    scores, grad = gradient_by_hand(head, activation, np.array([1, 3]))
    np.testing.assert_allclose(p.gradients["features"], nchw(grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)


def test_nested_module_by_path_and_by_unique_name():
    model = nets.small_net()
    x = nets.images(2)
    by_path = backend.probe(model, x, "backbone/conv2", target=1)
    by_name = backend.probe(model, x, "conv2", target=1)
    assert by_path.layers == by_name.layers == ["backbone/conv2"]
    np.testing.assert_array_equal(by_name.gradients["backbone/conv2"], by_path.gradients["backbone/conv2"])
    # relu(h + r): the gradient at conv2's output r is the gradient at the block's input to that ReLU
    block = backend.probe(model, x, "backbone", target=1)
    mask = block.activations["backbone"] > 0
    np.testing.assert_array_equal(by_path.gradients["backbone/conv2"][~mask], 0)


def test_several_layers_in_one_call_equal_one_at_a_time():
    model = nets.small_net()
    x = nets.images(2)
    layers = ["backbone/bn1", "backbone", "conv3"]
    together = backend.probe(model, x, layers, target=4)
    assert together.layers == layers
    for name in layers:
        alone = backend.probe(model, x, name, target=4)
        np.testing.assert_allclose(together.activations[name], alone.activations[name], **TOL)
        np.testing.assert_allclose(together.gradients[name], alone.gradients[name], **TOL)


def test_batch_equals_one_image_at_a_time():
    model = nets.small_net()
    x = nets.images(2)
    batch = backend.probe(model, x, "conv3", target=[0, 4])
    for i, t in enumerate([0, 4]):
        one = backend.probe(model, x[i : i + 1], "conv3", target=t)
        np.testing.assert_allclose(batch.gradients["conv3"][i], one.gradients["conv3"][0], **TOL)
        np.testing.assert_allclose(batch.scores[i], one.scores[0], **TOL)


def test_shared_module_is_taken_at_its_last_call():
    module, variables = nets.shared_conv_net()
    x = nets.images(2, size=8)
    p = backend.probe((module, variables), x, "conv", target=0)
    params = variables["params"]

    def conv(h):
        return module.apply(variables, h, method=lambda m, v: m.conv(v))

    second = conv(jax.nn.relu(conv(x)))

    def head(h):
        return jnp.mean(h, axis=(1, 2)) @ params["fc"]["kernel"] + params["fc"]["bias"]

    scores, grad = gradient_by_hand(head, second, np.array([0, 0]))
    np.testing.assert_allclose(p.activations["conv"], nchw(second), **TOL)
    np.testing.assert_allclose(p.gradients["conv"], nchw(grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)


def test_callable_target_in_jax_numpy():
    model = nets.small_net()
    x = nets.images(2)
    p = backend.probe(model, x, "conv3", target=lambda out: out[:, 1] - out[:, 2])
    q1 = backend.probe(model, x, "conv3", target=1)
    q2 = backend.probe(model, x, "conv3", target=2)
    np.testing.assert_array_equal(p.targets, [-1, -1])
    np.testing.assert_allclose(p.scores, q1.scores - q2.scores, **TOL)
    np.testing.assert_allclose(p.gradients["conv3"], q1.gradients["conv3"] - q2.gradients["conv3"], **TOL)


def test_channels_first_pair():
    features, head = nets.seed_pair()
    model = backend.JaxModel(lambda x: x, lambda a: head(jnp.moveaxis(a, 1, -1)), channel_axis=1)
    x = nets.SEED_A[None]  # NCHW
    p = backend.probe(model, x, target=0)
    np.testing.assert_array_equal(p.activations["features"][0], nets.SEED_A)
    alpha_everywhere = np.broadcast_to(nets.SEED_ALPHA[:, None, None], (2, 3, 3))
    np.testing.assert_array_equal(p.gradients["features"][0], alpha_everywhere)
    g = backend.input_gradient(model, x, target=0).gradient
    np.testing.assert_array_equal(g, p.gradients["features"])


def test_token_layer_with_reshape():
    def features(x):
        n, h, w, c = x.shape
        return x.reshape(n, h * w, c)  # (N, tokens, C), no class token

    def head(tokens):
        return jnp.mean(tokens, axis=1)

    x = nets.images(1, size=4)
    def to_grid(tokens):
        return common.vit_reshape(tokens, class_tokens=0)

    grid = backend.probe((features, head), x, "features", target=2, reshape=to_grid)
    np.testing.assert_array_equal(grid.activations["features"], nchw(x))
    expected = np.zeros((1, 3, 4, 4), np.float32)
    expected[:, 2] = 1 / 16
    np.testing.assert_array_equal(grid.gradients["features"], expected)
    with pytest.raises(ValueError, match="not a spatial map"):
        backend.probe((features, head), x, "features")


# --- guided backprop and deconvnet -------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jax.nn.relu", "maximum", "jit", "checkpoint", "flax"])
@pytest.mark.parametrize("rule", ["plain", "guided", "deconvnet"])
def test_relu_rules_on_the_hand_example(kind, rule):
    model = nets.hand_relu_flax() if kind == "flax" else nets.hand_relu_pair(kind)
    result = backend.input_gradient(model, nets.HAND_X, target=0, rule=rule)
    assert result.gradient.shape == (1, 4, 1, 1)
    np.testing.assert_array_equal(result.gradient[0, :, 0, 0], nets.HAND_GRADIENTS[rule])
    assert result.scores[0] == 2 * 1 + -1 * 4


def test_guided_grad_cam_layers_keep_plain_gradients():
    model = nets.small_net()
    x = nets.images(2)
    plain = backend.probe(model, x, ["backbone", "conv3"], target=3)
    guided = backend.input_gradient(model, x, target=3, rule="guided", layers=["backbone", "conv3"])
    for name in ["backbone", "conv3"]:
        np.testing.assert_allclose(guided.probe.gradients[name], plain.gradients[name], **TOL)
        np.testing.assert_allclose(guided.probe.activations[name], plain.activations[name], **TOL)
    plain_input = backend.input_gradient(model, x, target=3)
    assert guided.gradient.shape == plain_input.gradient.shape == (2, 3, 16, 16)
    assert not np.allclose(guided.gradient, plain_input.gradient)


def test_plain_input_gradient_equals_jax_grad():
    module, variables = nets.small_net()
    x = nets.images(2)
    result = backend.input_gradient((module, variables), x, target=[1, 2], layers="conv3")

    def total(xb):
        return jnp.sum(jnp.take_along_axis(module.apply(variables, xb), jnp.array([[1], [2]]), axis=1))

    np.testing.assert_allclose(result.gradient, nchw(jax.grad(total)(jnp.asarray(x))), **TOL)
    plain = backend.probe((module, variables), x, "conv3", target=[1, 2])
    np.testing.assert_allclose(result.probe.gradients["conv3"], plain.gradients["conv3"], **TOL)


def test_guided_refuses_relus_inside_a_loop_and_models_without_relus():
    with pytest.raises(ValueError, match="inside a 'scan'"):
        backend.input_gradient(nets.scanned_relu_pair(), nets.HAND_X, target=0, rule="guided")
    features, head = nets.seed_pair()
    with pytest.raises(ValueError, match="has none"):
        backend.input_gradient((features, head), nets.SEED_X, target=0, rule="guided")


def test_nothing_left_behind_after_an_exception():
    module = nets.Exploding()
    variables = {"params": {"conv": {"kernel": jnp.ones((3, 3, 3, 2)), "bias": jnp.zeros(2)}}}
    x = nets.images(1, size=8)
    with pytest.raises(RuntimeError, match="boom"):
        backend.probe((module, variables), x, "conv")
    with pytest.raises(RuntimeError, match="boom"):
        backend.layer_shapes((module, variables), x)
    # no interceptor is left installed, and the next probe works as before
    assert not list(nn.module._global_interceptor_stack)
    model = nets.small_net()
    p = backend.probe(model, x, "conv3")
    activation, _ = split_small_net(*model, x)
    np.testing.assert_allclose(p.activations["conv3"], nchw(activation), **TOL)


# --- compilation: one trace per shape ----------------------------------------------------------


def test_two_hundred_calls_trace_once():
    module, variables = nets.small_net()
    x = nets.images(2)
    before = backend._trace_count((module, variables))
    backend.probe((module, variables), x, "conv3")
    traced = backend._trace_count((module, variables))
    assert traced - before <= 1  # equal modules share compiled probes: another test may have traced it
    for i in range(200):
        # a fresh tuple each call, as users write it
        backend.probe((module, variables), x, "conv3", target=i % 5)
    assert backend._trace_count((module, variables)) == traced


def test_module_with_unhashable_attributes_is_cached_by_identity():
    module = nets.ListWidthsNet([3, 4])
    variables = nets.numpy_init(module, (1, 8, 8, 3))
    x = nets.images(2, size=8)
    first = backend.probe((module, variables), x, "conv1")
    traced = backend._trace_count((module, variables))
    again = backend.probe((module, variables), x, "conv1")
    assert backend._trace_count((module, variables)) == traced == 1
    np.testing.assert_array_equal(again.gradients["conv1"], first.gradients["conv1"])


# --- names, shapes, default layer, predict, dense weights -------------------------------------


def test_layer_names_shapes_and_default_layer():
    model = nets.small_net()
    x = nets.images(2)
    assert sorted(backend.layer_names(model)) == [
        "backbone", "backbone/bn1", "backbone/conv1", "backbone/conv2", "conv3", "fc1", "fc2"
    ]
    shapes = backend.layer_shapes(model, x)
    assert [name for name, _ in shapes] == [
        "backbone/conv1", "backbone/bn1", "backbone/conv2", "backbone", "conv3", "fc1", "fc2"
    ]
    assert dict(shapes)["conv3"] == (2, 8, 8, 8) and dict(shapes)["fc2"] == (2, 5)
    assert backend.default_layer(model, x) == "conv3"
    assert backend.probe(model, x).layers == ["conv3"]
    assert backend.layer_names(nets.seed_pair()) == ["features"]


def test_predict_in_padded_chunks_equals_one_call():
    module, variables = nets.small_net()
    x = nets.images(5)
    whole = backend.predict((module, variables), x)
    np.testing.assert_allclose(whole, np.asarray(module.apply(variables, x)), **TOL)
    np.testing.assert_allclose(backend.predict((module, variables), x, batch_size=2), whole, **TOL)
    assert whole.dtype == np.float32 and whole.shape == (5, 5)


def test_predict_ablated_zeroes_one_channel_per_image():
    module, variables = nets.small_net()
    x = nets.images(2)
    outputs = backend.predict_ablated((module, variables), x, "conv3", [-1, 3])
    activation, head = split_small_net(module, variables, x)
    ablated = np.array(activation)
    ablated[1, :, :, 3] = 0
    np.testing.assert_allclose(outputs, np.asarray(head(ablated)), **TOL)
    with pytest.raises(ValueError, match="runs 2 times"):
        backend.predict_ablated(nets.shared_conv_net(), nets.images(1, size=8), "conv", [0])


def test_dense_weight_is_classes_by_inputs():
    module, variables = nets.small_net()
    W = backend.dense_weight((module, variables), "fc2")
    np.testing.assert_array_equal(W, np.asarray(variables["params"]["fc2"]["kernel"]).T)
    with pytest.raises(ValueError, match="not a Dense layer"):
        backend.dense_weight((module, variables), "backbone")


# --- bad input ---------------------------------------------------------------------------------


def test_unknown_layer_names_the_closest():
    with pytest.raises(KeyError, match="closest: conv3"):
        backend.probe(nets.small_net(), nets.images(1), "conv33")
    with pytest.raises(KeyError, match="closest: features"):
        backend.probe(nets.seed_pair(), nets.SEED_X, "feature")


def test_model_without_a_layer_spec_is_refused():
    module, _ = nets.small_net()
    jitted = jax.jit(lambda x: x.sum(axis=(1, 2)))
    for bare in (module, jitted):
        assert get_backend(bare) is backend
        with pytest.raises(TypeError, match="does not say where its layers are"):
            backend.probe(bare, nets.images(1))
    with pytest.raises(TypeError, match="supported are"):
        get_backend(lambda x: x)


def test_layer_returning_a_tuple_is_refused():
    module = nets.TupleLayerNet()
    model = (module, nets.numpy_init(module, (1, 8, 8, 3)))
    x = nets.images(1, size=8)
    with pytest.raises(TypeError, match="'split' does not return one array"):
        backend.probe(model, x, "split")
    assert [name for name, _ in backend.layer_shapes(model, x)] == ["split/conv"]


def test_non_finite_input_is_refused():
    x = nets.images(1)
    x[0, 3, 4, 1] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        backend.probe(nets.small_net(), x)


def test_torch_tensor_is_refused_with_the_layout_hint():
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match="torch tensor was given to a JAX model"):
        backend.probe(nets.small_net(), torch.zeros(1, 3, 16, 16))


def test_bad_targets_give_the_valid_range():
    model = nets.small_net()
    x = nets.images(2)
    with pytest.raises(ValueError, match=r"valid classes are 0\.\.4"):
        backend.probe(model, x, "conv3", target=7)
    with pytest.raises(ValueError, match="got 3 targets for a batch of 2"):
        backend.probe(model, x, "conv3", target=[1, 2, 3])
    with pytest.raises(ValueError, match="one score per image"):
        backend.probe(model, x, "conv3", target=lambda out: out)
