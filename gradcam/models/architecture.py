"""The default model's architecture and weight format, written once for the three builders (NumPy only).

The network (input ``x`` in ``[0, 1]``, any square size; sizes below for 64x64)::

    normalize   x' = (x - MEAN) / STD                      MEAN = 0.5, STD = 0.25 (exact in float32)
    stem        conv3x3 stride 1,  3 -> 16, BN, ReLU        64x64
    block1      conv4x4 stride 2, 16 -> 32, BN, ReLU        32x32
    block2      conv4x4 stride 2, 32 -> 64, BN, ReLU        16x16
    block3      conv3x3 stride 1, 64 -> 64, BN, ReLU        16x16
    features    residual block: ReLU(x + BN(conv1x1(ReLU(BN(conv1x1(x))))))    16x16, 64 channels
    pool        global average pooling                      64
    fc          dense 64 -> classes                         logits

Why a 16x16 last map with a small receptive field: Grad-CAM's map is this layer's grid, enlarged.
The paper's localization (section 4.1) keeps the pixels above 15% of the map's maximum; on an 8x8
grid (cells of 8 pixels) and a receptive field of 56 pixels that region spread far past a 20-pixel
object and the box was right (IoU >= 0.5) on 1% of the images. Here a cell covers 4x4 pixels and a
``features`` cell sees 20x20 pixels around it (3 + 3 + 6 + 8; the 1x1 residual convolutions mix
channels without widening it), enough to tell a 60-degree corner from a right angle and a ring's
band from an outline, while a cell a few pixels off the object sees little of it.

Every 3x3 and 4x4 convolution pads one pixel on each side, the 1x1 ones none, and none has a bias
(batch norm follows). The strided convolutions are 4x4 so that the feature grid lines up with the
image: output cell ``k`` of a 4x4, stride-2, padding-1 convolution is centred between input pixels
``2k`` and ``2k + 1``, exactly where bilinear upsampling with half-pixel centres puts it (a 3x3
kernel would centre it on pixel ``2k``, and two such stages shift the 16x16 map by 1.5 pixels); the
stride-1 convolutions are centred and keep the grid. The head is global average pooling + one dense
layer, so CAM applies; ``features`` is the last spatial stage, the default Grad-CAM layer in every
framework.

Weights are one dict of NumPy float32 arrays in PyTorch's layout, whatever the framework:

- ``<stage>.conv.weight``: ``(out, in, k, k)`` for the stages ``stem`` and ``block3`` (k = 3), ``block1``
  and ``block2`` (k = 4); ``features.conv1.weight``, ``features.conv2.weight``: ``(64, 64, 1, 1)`` for the
  residual block;
- ``<bn>.weight``, ``<bn>.bias``, ``<bn>.running_mean``, ``<bn>.running_var``: ``(channels,)`` for
  each batch norm ``<stage>.bn``, ``features.bn1``, ``features.bn2``; inference uses
  ``y = (x - running_mean) / sqrt(running_var + BN_EPSILON) * weight + bias``;
- ``fc.weight``: ``(classes, 64)``, ``fc.bias``: ``(classes,)``; ``logits = pooled @ fc.weight.T + fc.bias``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

MEAN = 0.5
STD = 0.25
BN_EPSILON = 1e-5
# (name, input channels, output channels, kernel size, stride) of the conv + batch-norm + ReLU stages
STAGES: tuple[tuple[str, int, int, int, int], ...] = (
    ("stem", 3, 16, 3, 1),
    ("block1", 16, 32, 4, 2),
    ("block2", 32, 64, 4, 2),
    ("block3", 64, 64, 3, 1),
)
FEATURE_LAYER = "features"
FEATURE_CHANNELS = 64
RESIDUAL_KERNEL = 1
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def conv_batchnorm_pairs() -> list[tuple[str, str, int, int, int]]:
    """``(conv prefix, batch-norm prefix, in, out, kernel size)`` of every convolution, in execution order."""
    pairs = [(f"{name}.conv", f"{name}.bn", c_in, c_out, k) for name, c_in, c_out, k, _ in STAGES]
    pairs += [
        (f"{FEATURE_LAYER}.conv{i}", f"{FEATURE_LAYER}.bn{i}", FEATURE_CHANNELS, FEATURE_CHANNELS, RESIDUAL_KERNEL)
        for i in (1, 2)
    ]
    return pairs


def weight_shapes(num_classes: int) -> dict[str, tuple[int, ...]]:
    """Every weight name and its shape, for a network with ``num_classes`` outputs."""
    shapes: dict[str, tuple[int, ...]] = {}
    for conv, bn, c_in, c_out, k in conv_batchnorm_pairs():
        shapes[f"{conv}.weight"] = (c_out, c_in, k, k)
        for field in BN_FIELDS:
            shapes[f"{bn}.{field}"] = (c_out,)
    shapes["fc.weight"] = (num_classes, FEATURE_CHANNELS)
    shapes["fc.bias"] = (num_classes,)
    return shapes


def check_weights(weights: Mapping[str, np.ndarray], num_classes: int | None = None) -> int:
    """Validate a weight dict against the architecture and return its number of classes.

    Raises
    ------
    ValueError
        Naming the missing, unexpected or mis-shaped entries, or a class count that differs from
        ``num_classes``.
    """
    if "fc.weight" not in weights:
        raise ValueError("the weights have no 'fc.weight'; they are not weights of the gradcam default model")
    found_classes = int(np.shape(weights["fc.weight"])[0])
    if num_classes is not None and num_classes != found_classes:
        raise ValueError(f"num_classes={num_classes} but the weights have {found_classes} classes")
    expected = weight_shapes(found_classes)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    wrong = [
        f"{k} {tuple(np.shape(weights[k]))} (expected {expected[k]})"
        for k in expected
        if k in weights and tuple(np.shape(weights[k])) != expected[k]
    ]
    problems = []
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected {', '.join(unexpected)}")
    if wrong:
        problems.append(f"wrong shape {', '.join(wrong)}")
    if problems:
        raise ValueError("the weights do not fit the default model: " + "; ".join(problems))
    return found_classes


def random_weights(seed: int = 0, num_classes: int = 5) -> dict[str, np.ndarray]:
    """Seeded random weights in the format above (He-normal convolutions, uniform dense layer).

    The batch-norm statistics and affine terms are random too (positive variances), so that
    comparing the three frameworks on these weights exercises every conversion, not only the
    convolutions.
    """
    rng = np.random.default_rng(seed)
    weights: dict[str, np.ndarray] = {}
    for conv, bn, c_in, c_out, k in conv_batchnorm_pairs():
        weights[f"{conv}.weight"] = rng.normal(0.0, np.sqrt(2.0 / (k * k * c_in)), size=(c_out, c_in, k, k))
        weights[f"{bn}.weight"] = rng.uniform(0.5, 1.5, size=c_out)
        weights[f"{bn}.bias"] = rng.normal(0.0, 0.1, size=c_out)
        weights[f"{bn}.running_mean"] = rng.normal(0.0, 0.1, size=c_out)
        weights[f"{bn}.running_var"] = rng.uniform(0.5, 2.0, size=c_out)
    bound = 1.0 / np.sqrt(FEATURE_CHANNELS)
    weights["fc.weight"] = rng.uniform(-bound, bound, size=(num_classes, FEATURE_CHANNELS))
    weights["fc.bias"] = rng.uniform(-bound, bound, size=num_classes)
    return {k: v.astype(np.float32) for k, v in weights.items()}
