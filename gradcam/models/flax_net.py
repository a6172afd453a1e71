"""The default model as a Flax linen module plus its variables (NHWC). See ``gradcam.models.architecture``.

Input: float32 ``(N, H, W, 3)`` in ``[0, 1]``; the module normalizes inside. Submodule names
follow the PyTorch modules: ``stem``, ``block1``, ``block2``, ``block3`` (each ``conv``, ``bn``),
``features`` (the residual block, ``conv1``, ``bn1``, ``conv2``, ``bn2``: the last spatial stage
and the default Grad-CAM layer, path ``("features",)``) and ``fc``. Batch norm always uses the
running statistics (inference only)::

    module, variables = build(weights)
    logits = module.apply(variables, x)
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from gradcam.models.architecture import (
    BN_EPSILON,
    FEATURE_CHANNELS,
    FEATURE_LAYER,
    MEAN,
    RESIDUAL_KERNEL,
    STAGES,
    STD,
    check_weights,
    conv_batchnorm_pairs,
    random_weights,
)

_PADDING = ((1, 1), (1, 1))


class ConvBNReLU(nn.Module):
    """conv (padding 1 on each side, no bias) -> batch norm -> ReLU."""

    channels: int
    kernel: int
    stride: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel = (self.kernel, self.kernel)
        x = nn.Conv(self.channels, kernel, strides=self.stride, padding=_PADDING, use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
        return nn.relu(x)


class ResidualBlock(nn.Module):
    """``ReLU(x + BN(conv(ReLU(BN(conv(x))))))`` with the channel count and the grid kept."""

    channels: int
    kernel: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kernel, pad = (self.kernel, self.kernel), self.kernel // 2
        padding = ((pad, pad), (pad, pad))
        y = nn.Conv(self.channels, kernel, padding=padding, use_bias=False, name="conv1")(x)
        y = nn.relu(nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn1")(y))
        y = nn.Conv(self.channels, kernel, padding=padding, use_bias=False, name="conv2")(y)
        y = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn2")(y)
        return nn.relu(x + y)


class ShapesNet(nn.Module):
    """The small ResNet-flavoured CNN: four conv stages, one residual block, GAP, one dense layer."""

    num_classes: int = 5

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = (x - MEAN) / STD
        for name, _, c_out, kernel, stride in STAGES:
            x = ConvBNReLU(c_out, kernel, stride, name=name)(x)
        x = ResidualBlock(FEATURE_CHANNELS, RESIDUAL_KERNEL, name=FEATURE_LAYER)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes, name="fc")(x)


def build(
    weights: Mapping[str, np.ndarray] | None = None, num_classes: int | None = None
) -> tuple[ShapesNet, dict[str, Any]]:
    """The default model as ``(module, variables)`` with ``weights`` (``None``: ``random_weights(0)``).

    ``variables = {"params": ..., "batch_stats": ...}``: convolution kernels transposed from
    ``(out, in, kh, kw)`` to Flax's ``(kh, kw, in, out)``, batch norm ``weight``/``bias`` to
    ``scale``/``bias`` and ``running_mean``/``running_var`` to ``mean``/``var``, the dense kernel
    from ``(classes, 64)`` to ``(64, classes)``.
    """
    if weights is None:
        weights = random_weights(0, num_classes or 5)
    num_classes = check_weights(weights, num_classes)
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for conv, bn, *_ in conv_batchnorm_pairs():
        stage, conv_name = conv.split(".")
        bn_name = bn.split(".")[1]
        params.setdefault(stage, {})[conv_name] = {"kernel": jnp.asarray(w[f"{conv}.weight"].transpose(2, 3, 1, 0))}
        params[stage][bn_name] = {"scale": jnp.asarray(w[f"{bn}.weight"]), "bias": jnp.asarray(w[f"{bn}.bias"])}
        stats.setdefault(stage, {})[bn_name] = {
            "mean": jnp.asarray(w[f"{bn}.running_mean"]),
            "var": jnp.asarray(w[f"{bn}.running_var"]),
        }
    params["fc"] = {"kernel": jnp.asarray(w["fc.weight"].T), "bias": jnp.asarray(w["fc.bias"])}
    return ShapesNet(num_classes), {"params": params, "batch_stats": stats}
