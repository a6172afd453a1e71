"""Small JAX and Flax models for the backend tests: pairs of functions and ``linen`` modules.

Also the independent references the tests compare the backend with (``jax.grad`` by hand, models split at a
layer). The hand-worked numbers come from ``seeds.py``; the models are channels last (NHWC), Flax's layout.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from seeds import HAND_T, HAND_U, SEED_A, SEED_ALPHA, SEED_W

SEED_X = SEED_A.transpose(1, 2, 0)[None]  # A as one NHWC image

# how many times a CountingNet has run: a callback counts executions, which an abstract trace does not make
RUNS = [0]


def seed_pair() -> tuple[Callable, Callable]:
    """``features`` is the identity (its output is ``A``); ``head(A) = sum_k alpha_k sum_ij A_kij`` as (N, 1)."""

    def features(x):
        return x

    def head(a):
        return jnp.sum(a * SEED_ALPHA, axis=(1, 2, 3))[:, None]

    return features, head


class Identity(nn.Module):
    @nn.compact
    def __call__(self, x):
        return x


class SeedNet(nn.Module):
    """The seed example as a Flax module: an ``Identity`` named ``features`` and a bias-free ``Dense`` head."""

    @nn.compact
    def __call__(self, x):
        a = Identity(name="features")(x)
        return nn.Dense(1, use_bias=False, name="head")(a.reshape(a.shape[0], -1))


def seed_flax() -> tuple[nn.Module, dict]:
    # the flattened NHWC index of A[i, j, k] is (3 i + j) 2 + k, so the kernel repeats alpha
    return SeedNet(), {"params": {"head": {"kernel": jnp.asarray(np.tile(SEED_ALPHA, 9)[:, None])}}}


class SeedDenseNet(nn.Module):
    """Seed 000's second example: an ``Identity`` named ``features`` on ``O`` (N, 2, 2, 1) and a bias-free ``Dense``
    head ``y1 = sum_ij O_ij W_ij`` with ``W = (0, 1, 0, 1)``."""

    @nn.compact
    def __call__(self, x):
        o = Identity(name="features")(x)
        return nn.Dense(1, use_bias=False, name="head")(o.reshape(o.shape[0], -1))


def seed_dense_flax() -> tuple[nn.Module, dict]:
    return SeedDenseNet(), {"params": {"head": {"kernel": jnp.asarray(SEED_W[:, None])}}}


class Block(nn.Module):
    """A ResNet-style block: conv, batch norm (running averages), ReLU, conv, residual add, ReLU."""

    channels: int

    @nn.compact
    def __call__(self, x):
        h = nn.Conv(self.channels, (3, 3), use_bias=False, name="conv1")(x)
        h = nn.BatchNorm(use_running_average=True, name="bn1")(h)
        h = nn.relu(h)
        r = nn.Conv(self.channels, (3, 3), name="conv2")(h)
        return nn.relu(h + r)


class SmallNet(nn.Module):
    """``head(features(x))`` with both halves as methods, so a test can split the model at ``conv3`` by hand."""

    classes: int = 5

    def setup(self):
        self.backbone = Block(6)
        self.conv3 = nn.Conv(8, (3, 3), strides=(2, 2))
        self.fc1 = nn.Dense(12)
        self.fc2 = nn.Dense(self.classes)

    def features(self, x):
        return self.conv3(self.backbone(x))

    def head(self, a):
        h = jnp.mean(nn.relu(a), axis=(1, 2))
        return self.fc2(nn.relu(self.fc1(h)))

    def __call__(self, x):
        return self.head(self.features(x))


def numpy_init(module: nn.Module, input_shape: tuple[int, ...], seed: int = 0) -> dict:
    """Variables of ``module`` drawn with NumPy: ``N(0, 1/fan_in)`` weights, small biases, batch-norm
    statistics away from the identity. (``module.init`` would compile JAX's random kernels, seconds each.)"""
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros(input_shape))
    rng = np.random.default_rng(seed)

    def draw(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = path[-1].key
        if name == "kernel":
            fan_in = int(np.prod(leaf.shape[:-1]))
            value = rng.normal(0, fan_in**-0.5, leaf.shape)
        elif name in ("scale", "var"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:  # bias, batch-norm bias and mean
            value = rng.normal(0, 0.1, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def small_net(seed: int = 0) -> tuple[SmallNet, dict]:
    """``SmallNet`` with random weights and non-trivial batch-norm statistics."""
    module = SmallNet()
    return module, numpy_init(module, (1, 16, 16, 3), seed)


def split_small_net(module: SmallNet, variables: dict, x: np.ndarray) -> tuple[np.ndarray, Callable[[Any], Any]]:
    """``SmallNet`` split at ``conv3`` through its own ``features`` / ``head`` methods."""
    activation = module.apply(variables, x, method=SmallNet.features)
    return np.asarray(activation), lambda a: module.apply(variables, a, method=SmallNet.head)


class SharedConvNet(nn.Module):
    """One ``Conv`` module called twice in the forward."""

    def setup(self):
        self.conv = nn.Conv(3, (3, 3))
        self.fc = nn.Dense(3)

    def __call__(self, x):
        h = self.conv(nn.relu(self.conv(x)))
        return self.fc(jnp.mean(h, axis=(1, 2)))


def shared_conv_net(seed: int = 0) -> tuple[SharedConvNet, dict]:
    module = SharedConvNet()
    return module, numpy_init(module, (1, 8, 8, 3), seed)


def split_shared_conv(module: SharedConvNet, variables: dict, x: np.ndarray) -> tuple[np.ndarray, Callable]:
    """The output of the second call of ``conv`` for ``x`` and the head from there to the logits."""

    def conv(h):
        return module.apply(variables, h, method=lambda m, v: m.conv(v))

    params = variables["params"]

    def head(h):
        return jnp.mean(h, axis=(1, 2)) @ params["fc"]["kernel"] + params["fc"]["bias"]

    return np.asarray(conv(jax.nn.relu(conv(x)))), head


def _count_run() -> None:
    RUNS[0] += 1


class CountingNet(nn.Module):
    """A small conv net with two classes that counts in ``RUNS`` how many times it has run."""

    @nn.compact
    def __call__(self, x):
        jax.debug.callback(_count_run)
        h = nn.relu(nn.Conv(4, (3, 3), name="conv")(x))
        return nn.Dense(2, name="fc")(jnp.mean(h, axis=(1, 2)))


def counting_net(seed: int = 0) -> tuple[CountingNet, dict]:
    module = CountingNet()
    return module, numpy_init(module, (1, 8, 8, 3), seed)


class Segmenter(nn.Module):
    """A per-pixel classifier: ``body`` (3x3 conv) -> ReLU -> a 1x1 conv to two class maps (N, 8, 8, 2)."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (3, 3), name="body")(x))
        return nn.Conv(2, (1, 1), name="classes")(h)


def segmenter(seed: int = 0) -> tuple[Segmenter, dict]:
    module = Segmenter()
    return module, numpy_init(module, (1, 8, 8, 3), seed)


def region(out):
    """A ``Segmenter`` target: the class-1 map summed over rows and columns 2..4, one score per image."""
    return jnp.sum(out[:, 2:5, 2:5, 1], axis=(1, 2))


def token_pair() -> tuple[Callable, Callable]:
    """The pixels as tokens: ``features`` outputs (N, H*W, C) and the head averages them, so the gradient of
    output ``c`` is ``1/(H*W)`` on channel ``c`` of every token."""

    def features(x):
        n, h, w, c = x.shape
        return x.reshape(n, h * w, c)

    def head(tokens):
        return jnp.mean(tokens, axis=1)

    return features, head


class ListWidthsNet(nn.Module):
    """A module with a list attribute, which makes it unhashable."""

    widths: list

    @nn.compact
    def __call__(self, x):
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}")(x))
        return nn.Dense(2, name="fc")(jnp.mean(x, axis=(1, 2)))


class Split(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Conv(2, (3, 3), name="conv")(x)
        return h, -h


class TupleLayerNet(nn.Module):
    """A submodule ``split`` that returns a tuple of two maps."""

    @nn.compact
    def __call__(self, x):
        a, b = Split(name="split")(x)
        return jnp.mean(a * b, axis=(1, 2))


class Exploding(nn.Module):
    """Raises in ``__call__`` after its convolution and a ReLU (to check that nothing is left behind after an
    error, whatever the ReLU rule)."""

    @nn.compact
    def __call__(self, x):
        nn.relu(nn.Conv(2, (3, 3), name="conv")(x))
        raise RuntimeError("boom")


def exploding_model() -> tuple[Exploding, dict]:
    return Exploding(), {"params": {"conv": {"kernel": jnp.ones((3, 3, 3, 2)), "bias": jnp.zeros(2)}}}


def hand_relu_pair(kind: str) -> tuple[Callable, Callable]:
    """``y = sum(u * relu(t * relu(x)))`` (``seeds.HAND_*``) with ``x`` the features, the ReLU written as ``kind``.

    ``kind``: ``"jax.nn.relu"``, ``"maximum"`` (``jnp.maximum(x, 0.0)``), ``"jit"`` (``jax.nn.relu``
    inside a jitted function) or ``"checkpoint"`` (inside ``jax.checkpoint``).
    """
    relu = {
        "jax.nn.relu": jax.nn.relu,
        "maximum": lambda v: jnp.maximum(v, 0.0),
        "jit": jax.jit(lambda v: jax.nn.relu(v) * 1.0),
        "checkpoint": jax.checkpoint(jax.nn.relu),
    }[kind]

    def features(x):
        return x

    def head(a):
        return jnp.sum(HAND_U * relu(HAND_T * relu(a)), axis=(1, 2, 3))[:, None]

    return features, head


class HandReluNet(nn.Module):
    """The hand example as a Flax module with ``nn.relu`` and two bias-free 1x1 convolutions."""

    @nn.compact
    def __call__(self, x):
        h = nn.relu(nn.Conv(4, (1, 1), use_bias=False, name="conv1")(x))
        h = nn.relu(nn.Conv(4, (1, 1), use_bias=False, name="conv2")(h))
        return nn.Dense(1, use_bias=False, name="head")(h.reshape(h.shape[0], -1))


def hand_relu_flax() -> tuple[nn.Module, dict]:
    params = {
        "conv1": {"kernel": jnp.eye(4).reshape(1, 1, 4, 4)},
        "conv2": {"kernel": jnp.diag(jnp.asarray(HAND_T)).reshape(1, 1, 4, 4)},
        "head": {"kernel": jnp.asarray(HAND_U)[:, None]},
    }
    return HandReluNet(), {"params": params}


def scanned_relu_pair() -> tuple[Callable, Callable]:
    """A head whose ReLU sits inside ``lax.scan``, out of the guided rewrite's reach."""

    def features(x):
        return x

    def head(a):
        def step(carry, _):
            return jax.nn.relu(carry) - 0.5, None

        out, _ = jax.lax.scan(step, a, None, length=2)
        return jnp.sum(out, axis=(1, 2, 3))[:, None]

    return features, head


def gradient_by_hand(head: Callable, activation: np.ndarray, targets: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, d sum_n y_n / d A)`` for ``y_n = head(A)[n, targets[n]]``, by ``jax.grad`` from the layer on."""

    def total(a):
        scores = jnp.take_along_axis(head(a), jnp.asarray(targets)[:, None], axis=1)[:, 0]
        return jnp.sum(scores), scores

    (_, scores), grad = jax.value_and_grad(total, has_aux=True)(jnp.asarray(activation))
    return np.asarray(scores), np.asarray(grad)


def input_gradient_by_hand(model: tuple[nn.Module, dict], x: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """``d sum_n y_n / d x`` for ``y_n = module.apply(variables, x)[n, targets[n]]``, by ``jax.grad``."""
    module, variables = model

    def total(xb):
        return jnp.sum(jnp.take_along_axis(module.apply(variables, xb), jnp.asarray(targets)[:, None], axis=1))

    return np.asarray(jax.grad(total)(jnp.asarray(x)))


def logits(model: tuple[nn.Module, dict], x: np.ndarray) -> np.ndarray:
    """The outputs of a ``(module, variables)`` model for a NumPy batch, as NumPy."""
    module, variables = model
    return np.asarray(module.apply(variables, x))


def images(n: int = 2, size: int = 16, seed: int = 0) -> np.ndarray:
    """A reproducible NHWC float32 batch."""
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)
