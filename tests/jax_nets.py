"""Small JAX and Flax models for the backend tests: pairs of functions and ``linen`` modules."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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
SEED_X = SEED_A.transpose(1, 2, 0)[None]  # A as one NHWC image

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
    """Raises in ``__call__`` after its convolution (to check that nothing is left behind after an error)."""

    @nn.compact
    def __call__(self, x):
        nn.Conv(2, (3, 3), name="conv")(x)
        raise RuntimeError("boom")


def hand_relu_pair(kind: str) -> tuple[Callable, Callable]:
    """``y = sum(u * relu(t * relu(x)))`` with ``x`` the features, the ReLU written as ``kind``.

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


def images(n: int = 2, size: int = 16, seed: int = 0) -> np.ndarray:
    """A reproducible NHWC float32 batch."""
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)
