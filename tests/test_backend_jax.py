"""What only the JAX backend has: ``(features, head)`` pairs and ``JaxModel`` (channels first too), Flax modules
by path, Flax interceptors removed after an error, ReLUs the jaxpr rewrite cannot reach, compiled probes (traced
once, a module with unhashable fields cached by identity), models that do not say where their layers are.

The contract that every backend keeps (hand-worked numbers, targets, errors, layer listings, predict) is tested
once for all in ``test_backend_contract.py``.
"""
from __future__ import annotations

import numpy as np
import pytest

jax = pytest.importorskip("jax")
nn = pytest.importorskip("flax.linen")
import jax.numpy as jnp
import jax_nets as nets
import seeds

from gradcam.backends import get_backend
from gradcam.backends import jax as backend

TOL = dict(rtol=1e-5, atol=1e-6)  # float32: the same ops in another order


def nchw(a) -> np.ndarray:
    return np.asarray(a).transpose(0, 3, 1, 2)


# --- pairs of functions -------------------------------------------------------------------------


def test_pair_probe_equals_vjp_by_hand():
    module, variables = nets.small_net()
    activation, head = nets.split_small_net(module, variables, nets.images(2))

    def features(x):
        return module.apply(variables, x, method=nets.SmallNet.features)

    p = backend.probe(backend.JaxModel(features, head), nets.images(2), "features", target=[1, 3])
    scores, grad = nets.gradient_by_hand(head, activation, np.array([1, 3]))
    np.testing.assert_allclose(p.gradients["features"], nchw(grad), **TOL)
    np.testing.assert_allclose(p.scores, scores, **TOL)


def test_a_pair_has_one_layer_called_features():
    assert backend.layer_names(nets.seed_pair()) == ["features"]


def test_channels_first_pair():
    _, head = nets.seed_pair()
    model = backend.JaxModel(lambda x: x, lambda a: head(jnp.moveaxis(a, 1, -1)), channel_axis=1)
    assert backend.input_channel_axis(model) == 1
    x = seeds.SEED_A[None]  # NCHW
    p = backend.probe(model, x, "features", target=0)
    np.testing.assert_array_equal(p.activations["features"][0], seeds.SEED_A)
    alpha_everywhere = np.broadcast_to(seeds.SEED_ALPHA[:, None, None], (2, 3, 3))
    np.testing.assert_array_equal(p.gradients["features"][0], alpha_everywhere)
    g = backend.input_gradient(model, x, target=0).gradient
    np.testing.assert_array_equal(g, p.gradients["features"])


# --- Flax modules by path -------------------------------------------------------------------------


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


def test_layer_returning_a_tuple_is_refused():
    module = nets.TupleLayerNet()
    model = (module, nets.numpy_init(module, (1, 8, 8, 3)))
    x = nets.images(1, size=8)
    with pytest.raises(TypeError, match="'split' does not return one array"):
        backend.probe(model, x, "split")
    assert [name for name, _ in backend.layer_shapes(model, x)] == ["split/conv"]


def test_model_without_a_layer_spec_is_refused():
    module, _ = nets.small_net()
    jitted = jax.jit(lambda x: x.sum(axis=(1, 2)))
    for bare in (module, jitted):
        assert get_backend(bare) is backend
        with pytest.raises(TypeError, match="does not say where its layers are"):
            backend.probe(bare, nets.images(1), "conv3")
    with pytest.raises(TypeError, match="supported are"):
        get_backend(lambda x: x)


def test_layer_shapes_leave_no_interceptor_after_an_exception():
    x = nets.images(1, size=8)
    with pytest.raises(RuntimeError, match="boom"):
        backend.layer_shapes(nets.exploding_model(), x)
    assert not list(nn.module._global_interceptor_stack)


# --- guided backprop: what the jaxpr rewrite cannot reach -----------------------------------------


def test_guided_refuses_relus_inside_a_loop_and_counts_none_in_a_model_without_relus():
    with pytest.raises(ValueError, match="inside a 'scan'"):
        backend.input_gradient(nets.scanned_relu_pair(), seeds.HAND_X, target=0, rule="guided")
    pair = nets.seed_pair()
    guided = backend.input_gradient(pair, nets.SEED_X, target=0, rule="guided")
    plain = backend.input_gradient(pair, nets.SEED_X, target=0)
    assert guided.relu_count == 0 and plain.relu_count == -1
    np.testing.assert_array_equal(guided.gradient, plain.gradient)


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


def test_output_selects_one_entry_of_a_tuple_or_dict_output():
    features, head = nets.seed_pair()
    x = nets.SEED_X
    pair = backend.JaxModel(features, lambda A: {"scores": head(A), "twice": 2 * head(A)})
    explained, notes = backend.explained_model(pair, output="twice")
    assert notes == ("explaining the model's output 'twice'",)
    doubled = backend.probe(explained, x, "features", target=0)
    plain = backend.probe((features, head), x, "features", target=0)
    np.testing.assert_allclose(doubled.gradients["features"], 2 * plain.gradients["features"], **TOL)
    with pytest.raises(KeyError, match=r"no 'logits'; it has keys \['scores', 'twice'\]"):
        backend.probe(backend.explained_model(pair, output="logits")[0], x, "features", target=0)


def test_a_layer_norms_variance_clamp_is_not_taken_for_a_relu():
    # Flax's LayerNorm writes max(0, var) before its rsqrt: guided backprop must leave it plain, and count it not
    import flax.linen as nn

    class NormedNet(nn.Module):
        relu: bool

        @nn.compact
        def __call__(self, x):
            x = nn.LayerNorm(name="norm")(nn.Conv(4, (3, 3), name="conv")(x))
            return nn.Dense(2, name="fc")((nn.relu(x) if self.relu else x).mean(axis=(1, 2)))

    x = nets.images(1, size=8)
    for relu, count in ((False, 0), (True, 1)):
        module = NormedNet(relu)
        model = (module, module.init(jax.random.PRNGKey(0), x))
        guided = backend.input_gradient(model, x, target=0, rule="guided")
        assert guided.relu_count == count
        if not relu:
            np.testing.assert_allclose(guided.gradient, backend.input_gradient(model, x, target=0).gradient, **TOL)
