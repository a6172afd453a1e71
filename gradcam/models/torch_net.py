"""The default model in PyTorch (NCHW). See ``gradcam.models.architecture`` for the network and weight format.

Input: float32 ``(N, 3, H, W)`` in ``[0, 1]``; the model normalizes inside (``normalize`` module).
Module names: ``normalize``, ``stem``, ``block1``, ``block2``, ``block3``, ``features`` (the residual
block: the last spatial stage, 16x16 for 64x64 input, the default Grad-CAM layer), ``pool``, ``fc``.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from gradcam.models.architecture import (
    BN_EPSILON,
    FEATURE_CHANNELS,
    FEATURE_LAYER,
    MEAN,
    RESIDUAL_KERNEL,
    STAGES,
    STD,
    check_weights,
    random_weights,
)


class Normalize(nn.Module):
    """``x' = (x - mean) / std`` with the model's fixed constants."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - MEAN) / STD


class ConvBNReLU(nn.Module):
    """conv (padding 1, no bias) -> batch norm -> ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=BN_EPSILON)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class ResidualBlock(nn.Module):
    """``ReLU(x + BN(conv(ReLU(BN(conv(x))))))`` with the channel count and the grid kept."""

    def __init__(self, channels: int, kernel: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(channels, eps=BN_EPSILON)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, bias=False)
        self.bn2 = nn.BatchNorm2d(channels, eps=BN_EPSILON)
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(x + residual)


class ShapesNet(nn.Module):
    """The small ResNet-flavoured CNN: four conv stages, one residual block, GAP, one dense layer."""

    def __init__(self, num_classes: int = 5) -> None:
        super().__init__()
        self.normalize = Normalize()
        for name, c_in, c_out, kernel, stride in STAGES:
            self.add_module(name, ConvBNReLU(c_in, c_out, kernel, stride))
        self.add_module(FEATURE_LAYER, ResidualBlock(FEATURE_CHANNELS, RESIDUAL_KERNEL))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(FEATURE_CHANNELS, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for name, *_ in STAGES:
            x = getattr(self, name)(x)
        x = getattr(self, FEATURE_LAYER)(x)
        return self.fc(self.pool(x))


def build(weights: Mapping[str, np.ndarray] | None = None, num_classes: int | None = None) -> ShapesNet:
    """The default model as a ``torch.nn.Module`` in eval mode, on the CPU.

    Parameters
    ----------
    weights
        A dict in the format of ``gradcam.models.architecture`` (e.g. ``gradcam.models.load_weights()``);
        ``None`` gives ``random_weights(seed=0, num_classes)``.
    num_classes
        Number of outputs; must agree with ``weights`` when both are given.
    """
    if weights is None:
        weights = random_weights(0, num_classes or 5)
    num_classes = check_weights(weights, num_classes)
    model = ShapesNet(num_classes)
    state = model.state_dict()
    with torch.no_grad():
        for name, value in weights.items():
            state[name].copy_(torch.from_numpy(np.asarray(value, dtype=np.float32)))
    return model.eval()


def weights_of(model: ShapesNet) -> dict[str, np.ndarray]:
    """The model's weights as float32 NumPy arrays in the framework-neutral format (``build`` inverts it)."""
    return {
        name: tensor.detach().cpu().numpy().astype(np.float32)
        for name, tensor in model.state_dict().items()
        if not name.endswith("num_batches_tracked")
    }
