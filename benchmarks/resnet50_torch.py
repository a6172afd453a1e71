"""A ResNet-50-shaped network in plain PyTorch (our own definition, random weights; no torchvision).

The shape follows He et al. (2016), "Deep Residual Learning for Image Recognition", table 1: a 7x7 stride-2 stem
and max pool, then bottleneck blocks (1x1 reduce, 3x3, 1x1 expand by 4) in stages of 3, 4, 6 and 3 blocks with
64, 128, 256 and 512 inner channels, global average pooling and one 1000-way dense layer: 25.6 M parameters.
The module names (``conv1``, ``layer1`` ... ``layer4``, ``fc``) and the in-place ReLU shared inside each block
are those users know from the common ImageNet model zoos, so layer names in the benchmark read the same.
"""
from __future__ import annotations

import torch
from torch import nn

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (inner channels, blocks, stride of the first)
EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, c_in: int, inner: int, stride: int) -> None:
        super().__init__()
        c_out = inner * EXPANSION
        self.conv1 = nn.Conv2d(c_in, inner, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(inner)
        self.conv2 = nn.Conv2d(inner, inner, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(inner)
        self.conv3 = nn.Conv2d(inner, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


class ResNet50(nn.Module):
    def __init__(self, classes: int = 1000) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c_in = 64
        for index, (inner, blocks, stride) in enumerate(STAGES, start=1):
            stage = []
            for b in range(blocks):
                stage.append(Bottleneck(c_in, inner, stride if b == 0 else 1))
                c_in = inner * EXPANSION
            setattr(self, f"layer{index}", nn.Sequential(*stage))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c_in, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(seed: int = 0, classes: int = 1000) -> ResNet50:
    """A ResNet-50-shaped model with seeded random weights, in eval mode.

    Convolutions keep PyTorch's default initialisation; the batch norms get their running statistics from
    one forward over one random image, so activations stay of order one through all 16 blocks instead of
    growing with depth, as in a trained network.
    """
    torch.manual_seed(seed)
    model = ResNet50(classes)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224))
    return model.eval()
