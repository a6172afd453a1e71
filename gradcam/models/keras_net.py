"""The default model as a Keras 3 functional model (NHWC). See ``gradcam.models.architecture``.

Input: float32 ``(N, H, W, 3)`` in ``[0, 1]``; the ``normalize`` layer does ``(x - 0.5) / 0.25``.
Layer names follow the PyTorch modules, "_" for ".": a stage ``s`` is the layers ``s_pad``,
``s_conv``, ``s_bn`` and the ReLU named ``s`` (so layer ``"block3"`` outputs what torch's
``model.block3`` does); the residual block is ``features_conv1``, ``features_bn1``,
``features_relu1``, ``features_conv2``, ``features_bn2``, ``features_add`` and the ReLU named
``features`` (the last spatial stage, the default Grad-CAM layer; its 1x1 convolutions need no
padding layers); then ``pool`` and ``fc``. Padding is an explicit ``ZeroPadding2D(1)`` because
Keras' ``padding="same"`` pads stride-2 convolutions unevenly, unlike PyTorch.
Batch norm runs in inference mode (``model(x)`` and ``model.predict`` use the moving statistics).
"""
from __future__ import annotations

from collections.abc import Mapping

import keras
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


def _conv_bn(
    x: keras.KerasTensor, stage: str, channels: int, kernel: int, stride: int, padding: int, index: str = ""
) -> keras.KerasTensor:
    if padding:
        x = keras.layers.ZeroPadding2D(padding, name=f"{stage}_pad{index}")(x)
    x = keras.layers.Conv2D(
        channels, kernel, strides=stride, padding="valid", use_bias=False, name=f"{stage}_conv{index}"
    )(x)
    return keras.layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{stage}_bn{index}")(x)


def _architecture(num_classes: int) -> keras.Model:
    inputs = keras.Input((None, None, 3), name="image")
    x = keras.layers.Rescaling(1.0 / STD, offset=-MEAN / STD, name="normalize")(inputs)
    for name, _, c_out, kernel, stride in STAGES:
        x = keras.layers.ReLU(name=name)(_conv_bn(x, name, c_out, kernel, stride, padding=1))
    shortcut = x
    residual_padding = RESIDUAL_KERNEL // 2
    x = _conv_bn(x, FEATURE_LAYER, FEATURE_CHANNELS, RESIDUAL_KERNEL, 1, residual_padding, index="1")
    x = keras.layers.ReLU(name=f"{FEATURE_LAYER}_relu1")(x)
    x = _conv_bn(x, FEATURE_LAYER, FEATURE_CHANNELS, RESIDUAL_KERNEL, 1, residual_padding, index="2")
    x = keras.layers.Add(name=f"{FEATURE_LAYER}_add")([shortcut, x])
    x = keras.layers.ReLU(name=FEATURE_LAYER)(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = keras.layers.Dense(num_classes, name="fc")(x)
    return keras.Model(inputs, outputs, name="gradcam_shapes_net")


def build(weights: Mapping[str, np.ndarray] | None = None, num_classes: int | None = None) -> keras.Model:
    """The default model as a Keras functional model with ``weights`` (``None``: ``random_weights(0)``).

    Convolution kernels are transposed from ``(out, in, kh, kw)`` to Keras' ``(kh, kw, in, out)``
    and the dense kernel from ``(classes, 64)`` to ``(64, classes)``.
    """
    if weights is None:
        weights = random_weights(0, num_classes or 5)
    num_classes = check_weights(weights, num_classes)
    model = _architecture(num_classes)
    w = {k: np.asarray(v, dtype=np.float32) for k, v in weights.items()}
    for conv, bn, *_ in conv_batchnorm_pairs():
        # Keras layer names are the PyTorch module names with "_" for "." ("features.bn1" -> "features_bn1")
        model.get_layer(conv.replace(".", "_")).set_weights([w[f"{conv}.weight"].transpose(2, 3, 1, 0)])
        model.get_layer(bn.replace(".", "_")).set_weights(
            [w[f"{bn}.weight"], w[f"{bn}.bias"], w[f"{bn}.running_mean"], w[f"{bn}.running_var"]]
        )
    model.get_layer("fc").set_weights([w["fc.weight"].T, w["fc.bias"]])
    return model
