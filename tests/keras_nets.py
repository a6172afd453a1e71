"""Small Keras models for the backend tests: each one exercises a different way Keras models are written."""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

# seed 000 (DESIGN.md section 4): two 3x3 channels and the weights alpha of a linear head
SEED_A = np.array(
    [
        [[1, 0, 2], [3, 5, 0], [1, 1, 1]],
        [[0, 1, 0], [3, 1, 0], [1, 0, 1]],
    ],
    dtype=np.float32,
)
SEED_ALPHA = np.array([1 / 3, -2 / 3], dtype=np.float32)
SEED_L = np.array([[1 / 3, 0, 2 / 3], [0, 1, 0], [0, 1 / 3, 0]])

# seed 000's second example: y1 = O11 W11 + O12 W12 + O21 W13 + O22 W14 with W = (0, 1, 0, 1)
SEED_W = np.array([0, 1, 0, 1], dtype=np.float32)
SEED_DY_DO = np.array([[0, 1], [0, 1]], dtype=np.float32)

# hand-worked Guided Backprop / Deconvnet example on four values (the same as the torch tests'):
#   x = [1, -2, 3, 4];  r1 = relu(x) = [1, 0, 3, 4];  z2 = t * r1 = [1, 0, -3, 4], t = [1, 1, -1, 1]
#   r2 = relu(z2) = [1, 0, 0, 4];  y = sum(u * r2), u = [2, 3, 5, -1]
#   plain:     g(r2) = u -> mask z2 > 0 -> [2, 0, 0, -1] -> * t -> [2, 0, 0, -1] -> mask x > 0 -> [2, 0, 0, -1]
#   guided:    [2, 0, 0, 0] (z2 > 0 and g > 0) -> * t -> [2, 0, 0, 0] -> (x > 0 and g > 0) -> [2, 0, 0, 0]
#   deconvnet: max(u, 0) = [2, 3, 5, 0] -> * t -> [2, 3, -5, 0] -> max(., 0) -> [2, 3, 0, 0]
HAND_X = np.array([1, -2, 3, 4], dtype=np.float32).reshape(1, 1, 1, 4)  # NHWC: one pixel, four channels
HAND_T = np.array([1, 1, -1, 1], dtype=np.float32)
HAND_U = np.array([2, 3, 5, -1], dtype=np.float32)
HAND_GRADIENTS = {
    "plain": [2, 0, 0, -1],
    "guided": [2, 0, 0, 0],
    "deconvnet": [2, 3, 0, 0],
}


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
    """``y = sum(u * relu(t * relu(x)))`` on the four channels of one pixel, with the ReLUs written as ``kind``.

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
