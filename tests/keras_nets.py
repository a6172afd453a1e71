"""Small Keras models for the backend tests: each one exercises a different way Keras models are written.

Also the independent references the tests compare the backend with (``tf.GradientTape`` by hand, models split at
a layer) and a snapshot of the layer attributes the backend may patch. The hand-worked numbers come from
``seeds.py``; the models are channels last (NHWC), Keras's default.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from seeds import HAND_T, HAND_U, SEED_ALPHA, SEED_W

from gradcam.backends import tensorflow as backend


def seed_model() -> keras.Model:
    """Input ``A`` (N, 3, 3, 2) -> identity layer ``features`` -> ``y = sum_k alpha_k sum_ij A_kij``."""
    inputs = keras.Input((3, 3, 2))
    features = keras.layers.Identity(name="features")(inputs)
    head = keras.layers.Dense(1, use_bias=False, name="head")
    y = head(keras.layers.Flatten(name="flatten")(features))
    # the flattened NHWC index of A[i, j, k] is (3 i + j) 2 + k, so the kernel repeats alpha
    head.kernel.assign(np.tile(SEED_ALPHA, 9)[:, None])
    return keras.Model(inputs, y, name="seed")


def seed_dense_model() -> keras.Model:
    """Input ``O`` (N, 2, 2, 1) -> identity ``features`` -> ``y1 = sum_ij O_ij W_ij`` with ``W = (0, 1, 0, 1)``."""
    inputs = keras.Input((2, 2, 1))
    features = keras.layers.Identity(name="features")(inputs)
    head = keras.layers.Dense(1, use_bias=False, name="head")
    y = head(keras.layers.Flatten()(features))
    head.kernel.assign(SEED_W[:, None])
    return keras.Model(inputs, y)


def segmenter(seed: int = 0) -> keras.Model:
    """A per-pixel classifier: ``body`` (3x3 conv) -> ReLU -> a 1x1 conv to two class maps (N, 8, 8, 2)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.ReLU(name="relu")(keras.layers.Conv2D(4, 3, padding="same", name="body")(inputs))
    return keras.Model(inputs, keras.layers.Conv2D(2, 1, name="classes")(h), name="segmenter")


def region(out: tf.Tensor) -> tf.Tensor:
    """A ``segmenter`` target: the class-1 map summed over rows and columns 2..4, one score per image."""
    return tf.reduce_sum(out[:, 2:5, 2:5, 1], axis=(1, 2))


class Counting(keras.layers.Layer):
    """The identity, counting in a variable how many times a graph that calls it has run (a trace does not)."""

    def build(self, input_shape):
        self.runs = self.add_weight(shape=(), initializer="zeros", trainable=False, name="runs")

    def call(self, x):
        self.runs.assign_add(1.0)
        return x

    def compute_output_shape(self, input_shape):
        return input_shape


def counting_model(seed: int = 0) -> keras.Model:
    """Conv ``conv`` -> ReLU -> ``Counting`` -> global average pool -> Dense with two classes."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.ReLU(name="relu")(keras.layers.Conv2D(4, 3, padding="same", name="conv")(inputs))
    h = keras.layers.GlobalAveragePooling2D(name="gap")(Counting(name="counting")(h))
    return keras.Model(inputs, keras.layers.Dense(2, name="fc")(h), name="counting_model")


def runs(model: keras.Model) -> int:
    """How many times the graphs around ``counting_model``'s ``Counting`` layer have run."""
    return int(model.get_layer("counting").runs.numpy())


def token_net() -> keras.Model:
    """The pixels as tokens: ``tokens`` outputs (N, 16, 3) for a 4x4 image and the head averages them, so the
    gradient of output ``c`` is ``1/16`` on channel ``c`` of every token."""
    inputs = keras.Input((4, 4, 3))
    tokens = keras.layers.Reshape((16, 3), name="tokens")(inputs)
    return keras.Model(inputs, keras.layers.GlobalAveragePooling1D(name="mean")(tokens), name="token_net")


def sequential_cnn(classes: int = 5, seed: int = 0) -> keras.Sequential:
    """Conv (activation="relu") -> Conv -> ReLU layer -> max pool -> Conv -> Activation("relu") -> GAP -> Dense."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential(
        [
            keras.Input((16, 16, 3)),
            keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1"),
            keras.layers.Conv2D(6, 3, padding="same", name="conv2"),
            keras.layers.ReLU(name="relu2"),
            keras.layers.MaxPooling2D(name="pool"),
            keras.layers.Conv2D(8, 3, padding="same", name="conv3"),
            keras.layers.Activation("relu", name="relu3"),
            keras.layers.GlobalAveragePooling2D(name="gap"),
            keras.layers.Dense(classes, name="fc"),
        ],
        name="sequential_cnn",
    )


def backbone(seed: int = 0) -> keras.Model:
    """A small functional ResNet-style block, used as a nested model."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    h = keras.layers.Conv2D(6, 3, padding="same", use_bias=False, name="conv1")(inputs)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU(name="relu1")(h)
    r = keras.layers.Conv2D(6, 3, padding="same", name="conv2")(h)
    h = keras.layers.Add(name="add")([h, r])
    h = keras.layers.ReLU(name="out")(h)
    return keras.Model(inputs, h, name="backbone")


def functional_cnn(classes: int = 5, seed: int = 0) -> keras.Model:
    """A functional model around the nested ``backbone`` model, with a ReLU dense head."""
    inner = backbone(seed)
    _randomize_batch_norm(inner.get_layer("bn1"), seed)
    inputs = keras.Input((16, 16, 3))
    h = inner(inputs)
    h = keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv3")(h)
    h = keras.layers.GlobalAveragePooling2D(name="gap")(h)
    h = keras.layers.Dense(12, activation="relu", name="fc1")(h)
    outputs = keras.layers.Dense(classes, name="fc2")(h)
    return keras.Model(inputs, outputs, name="functional_cnn")


def split_functional_cnn(model: keras.Model, x: np.ndarray) -> tuple[np.ndarray, Callable[[Any], Any]]:
    """``functional_cnn`` cut at ``conv3``: that layer's output for ``x`` and the head from there to the logits."""
    activation = keras.Model(model.inputs[0], model.get_layer("conv3").output)(x, training=False).numpy()

    def head(a):
        return model.get_layer("fc2")(model.get_layer("fc1")(model.get_layer("gap")(a)))

    return activation, head


class SubclassedCNN(keras.Model):
    """A subclassed model whose ``call`` wires its layers by hand (no ``training`` argument)."""

    def __init__(self, classes: int = 5, seed: int = 0) -> None:
        super().__init__(name="subclassed_cnn")
        keras.utils.set_random_seed(seed)
        self.conv1 = keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1")
        self.conv2 = keras.layers.Conv2D(8, 3, padding="same", name="conv2")
        self.relu = keras.layers.ReLU(name="relu")
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.fc = keras.layers.Dense(classes, name="fc")
        self(np.zeros((1, 16, 16, 3), np.float32))

    def call(self, x):
        return self.fc(self.gap(self.relu(self.conv2(self.conv1(x)))))


class SharedReluCNN(keras.Model):
    """One ReLU layer object called twice in the forward."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__(name="shared_relu_cnn")
        keras.utils.set_random_seed(seed)
        self.conv1 = keras.layers.Conv2D(4, 3, padding="same", name="conv1")
        self.conv2 = keras.layers.Conv2D(4, 3, padding="same", name="conv2")
        self.relu = keras.layers.ReLU(name="relu")
        self.gap = keras.layers.GlobalAveragePooling2D(name="gap")
        self.fc = keras.layers.Dense(3, name="fc")
        self(np.zeros((1, 8, 8, 3), np.float32))

    def call(self, x):
        return self.fc(self.gap(self.relu(self.conv2(self.relu(self.conv1(x))))))


def split_shared_relu(model: SharedReluCNN, x: np.ndarray) -> tuple[np.ndarray, Callable[[Any], Any]]:
    """The output of the second call of ``relu`` for ``x`` and the head from there to the logits."""
    second = model.relu(model.conv2(model.relu(model.conv1(x)))).numpy()
    return second, lambda a: model.fc(model.gap(a))


class HiddenReluCNN(keras.Model):
    """One ReLU as a Keras activation, one as ``tf.nn.relu`` inside ``call``, where Keras cannot see it."""

    def __init__(self) -> None:
        super().__init__(name="hidden_relu_cnn")
        self.conv1 = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv1")
        self.conv2 = keras.layers.Conv2D(4, 3, padding="same", name="conv2")
        self.fc = keras.layers.Dense(2, name="fc")
        self(np.zeros((1, 8, 8, 3), np.float32))

    def call(self, x):
        h = tf.nn.relu(self.conv2(self.conv1(x)))
        return self.fc(keras.ops.mean(h, axis=(1, 2)))


class Exploding(keras.layers.Layer):
    """Raises in ``call`` (to check that the model is left as found after an error)."""

    def call(self, x):
        raise RuntimeError("boom")

    def compute_output_shape(self, input_shape):
        return input_shape


def exploding_model() -> keras.Model:
    inputs = keras.Input((8, 8, 3))
    h = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv")(inputs)
    h = keras.layers.ReLU(name="relu")(h)
    h = Exploding(name="explode")(h)
    outputs = keras.layers.Dense(2, name="fc")(keras.layers.GlobalAveragePooling2D()(h))
    return keras.Model(inputs, outputs)


def hand_relu_model(kind: str) -> keras.Model:
    """``y = sum(u * relu(t * relu(x)))`` (``seeds.HAND_*``) on the four channels of one pixel, with the ReLUs
    written as ``kind``.

    ``kind``: ``"relu_layer"`` (``ReLU()``), ``"activation_layer"`` (``Activation("relu")``),
    ``"conv_activation"`` (1x1 ``Conv2D(activation="relu")``) or ``"dense_activation"``
    (``Dense(activation="relu")``).
    """
    inputs = keras.Input((1, 1, 4))
    identity, diag_t = np.eye(4, dtype=np.float32), np.diag(HAND_T)
    h = inputs
    if kind == "dense_activation":
        h = keras.layers.Flatten()(h)
    stages = []
    for kernel in (identity, diag_t):
        if kind in ("conv_activation", "dense_activation"):
            layer = _linear(kind, "relu")
            h = layer(h)
            stages.append((layer, kernel))
        else:
            layer = _linear("conv_activation", None)
            h = layer(h)
            stages.append((layer, kernel))
            h = keras.layers.ReLU()(h) if kind == "relu_layer" else keras.layers.Activation("relu")(h)
    for layer, kernel in stages:
        layer.kernel.assign(kernel.reshape(layer.kernel.shape))
    head = keras.layers.Dense(1, use_bias=False, name="head")
    y = head(keras.layers.Flatten()(h))
    head.kernel.assign(HAND_U[:, None])
    return keras.Model(inputs, y, name=f"hand_{kind}")


def _linear(kind: str, activation: str | None) -> keras.layers.Layer:
    if kind == "dense_activation":
        return keras.layers.Dense(4, use_bias=False, activation=activation)
    return keras.layers.Conv2D(4, 1, use_bias=False, activation=activation)


def token_model(seed: int = 0) -> keras.Model:
    """4x4 patches of a 16x16 image -> (N, 16, 8) tokens -> a dense mixing layer ``tokens`` -> pooled -> Dense."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    patches = keras.layers.Conv2D(8, 4, strides=4, name="patches")(inputs)
    tokens = keras.layers.Reshape((16, 8), name="flatten_grid")(patches)
    tokens = keras.layers.Dense(8, activation="relu", name="tokens")(tokens)
    pooled = keras.layers.GlobalAveragePooling1D(name="pool")(tokens)
    outputs = keras.layers.Dense(3, name="fc")(pooled)
    return keras.Model(inputs, outputs)


def gradient_by_hand(
    head: Callable[[Any], Any], activation: np.ndarray, targets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, d sum_n y_n / d A)`` for ``y_n = head(A)[n, targets[n]]``, eagerly, from the layer on."""
    a = tf.constant(activation)
    with tf.GradientTape() as tape:
        tape.watch(a)
        scores = tf.gather(head(a), np.asarray(targets), batch_dims=1)
        total = tf.reduce_sum(scores)
    return scores.numpy(), tape.gradient(total, a).numpy()


def input_gradient_by_hand(model: keras.Model, x: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """``d sum_n y_n / d x`` for ``y_n = model(x)[n, targets[n]]``, by ``tf.GradientTape``."""
    xt = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(xt)
        total = tf.reduce_sum(tf.gather(model(xt, training=False), np.asarray(targets), batch_dims=1))
    return tape.gradient(total, xt).numpy()


def logits(model: keras.Model, x: np.ndarray) -> np.ndarray:
    """The model's outputs for a NumPy batch in inference mode, as NumPy."""
    return model(x, training=False).numpy()


def layer_state(model: keras.Model) -> list[tuple[str, dict]]:
    """Each layer's own attributes that the backend may set while it traces: ``call`` and ``activation``."""
    paths = backend._layer_paths(model)
    return [(n, {k: vars(layer)[k] for k in ("call", "activation") if k in vars(layer)}) for n, layer in paths.items()]


def _randomize_batch_norm(layer: keras.layers.BatchNormalization, seed: int) -> None:
    """Non-trivial running statistics, so that inference mode matters."""
    rng = np.random.default_rng(seed)
    channels = layer.moving_mean.shape[0]
    layer.moving_mean.assign(rng.normal(0, 0.1, channels).astype(np.float32))
    layer.moving_variance.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
    layer.gamma.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
    layer.beta.assign(rng.normal(0, 0.1, channels).astype(np.float32))


def images(n: int = 2, size: int = 16, seed: int = 0) -> np.ndarray:
    """A reproducible NHWC float32 batch."""
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)
