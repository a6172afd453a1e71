"""Guided Backprop and Deconvnet for Keras: a ReLU whose backward rule is chosen when the backward is built.

Why this file exists:

* The rules change only the backward of each ReLU (DESIGN.md section 4), and TensorFlow fixes an op's
  gradient when the op is created. So the ReLU activations Keras knows (``activation="relu"`` on any
  layer, a ``ReLU`` layer without slope, cap or threshold, ``Activation("relu")``) are replaced, for one
  trace, by ``rectifier``: a ``tf.custom_gradient`` ReLU whose backward reads the rule from a context
  variable at the moment ``tape.gradient`` builds it.
* That lets one forward serve two backwards: the layer gradients of Guided Grad-CAM are built under the
  plain rule and the input gradient under the requested one (``backward_rule``).
* A ``Relu`` op of the traced forward that Keras cannot see (``tf.nn.relu`` inside a subclassed ``call``)
  would keep its plain backward and mix the rules silently, so it is counted and refused.
* Replaced attributes are put back in a ``finally`` (``layers.instance_attribute``): the model is left as
  found, also when the forward raises.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any

import keras
import tensorflow as tf

from gradcam.backends.tensorflow.layers import instance_attribute, layer_paths

_RELU_FUNCTIONS = (keras.activations.relu, keras.ops.relu, tf.nn.relu)

_backward_rule: contextvars.ContextVar[str] = contextvars.ContextVar("gradcam_tf_backward_rule", default="plain")


def relu_layers(model: keras.Model) -> list[tuple[keras.layers.Layer, str]]:
    """``(layer, attribute)`` for every ReLU Keras can see: an ``activation`` attribute, or the ``call``
    of a plain ReLU layer."""
    found: dict[int, tuple[keras.layers.Layer, str]] = {}
    for layer in layer_paths(model).values():
        activation = getattr(layer, "activation", None)
        if any(activation is relu for relu in _RELU_FUNCTIONS):
            found[id(layer)] = (layer, "activation")
        elif isinstance(layer, keras.layers.ReLU) and _is_plain_relu(layer):
            found[id(layer)] = (layer, "call")
    return list(found.values())


def _is_plain_relu(layer: keras.layers.ReLU) -> bool:
    return layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0


@contextlib.contextmanager
def rectified(relus: list[tuple[keras.layers.Layer, str]]) -> Iterator[list[None]]:
    """While open, every listed ReLU is the rule-aware ``rectifier``; yields a list with one entry per ReLU the
    forward called (the rule's count).

    Inside a trace, a ``Relu`` op of the forward that did not come from one of them (``tf.nn.relu``
    called in a subclassed ``call``) would keep its plain backward: that is an error, not a quiet mix.
    """
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    relu_ops_before = _relu_op_count(graph)
    replaced: list[None] = []

    def activation(x: tf.Tensor) -> tf.Tensor:
        replaced.append(None)
        return rectifier(x)

    def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
        return activation(inputs)

    with contextlib.ExitStack() as stack:
        for layer, attribute in relus:
            replacement = activation if attribute == "activation" else call
            stack.enter_context(instance_attribute(layer, attribute, replacement))
        yield replaced
    unreached = _relu_op_count(graph) - relu_ops_before - len(replaced)
    if unreached > 0:
        raise ValueError(
            f"{unreached} ReLU op(s) of this model are not Keras activations (tf.nn.relu called inside a "
            "layer's call?); guided backprop and deconvnet can change only activation='relu', ReLU() and "
            "Activation('relu')"
        )


def _relu_op_count(graph: tf.Graph | None) -> int:
    return 0 if graph is None else sum(op.type == "Relu" for op in graph.get_operations())


@tf.custom_gradient
def rectifier(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
    """``max(x, 0)`` whose backward follows the rule in force when the backward is built.

    plain: ``g [x > 0]``; guided: ``g [x > 0] [g > 0]``; deconvnet: ``g [g > 0]``.
    """
    y = tf.nn.relu(x)

    def backward(g: tf.Tensor) -> tf.Tensor:
        rule = _backward_rule.get()
        if rule == "deconvnet":
            return tf.nn.relu(g)
        passed = g * tf.cast(x > 0, g.dtype)
        return tf.nn.relu(passed) if rule == "guided" else passed

    return y, backward


@contextlib.contextmanager
def backward_rule(rule: str) -> Iterator[None]:
    """While open, the backwards that ``tape.gradient`` builds through ``rectifier`` follow ``rule``."""
    token = _backward_rule.set(rule)
    try:
        yield
    finally:
        _backward_rule.reset(token)
