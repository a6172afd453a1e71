"""Small PyTorch models for the backend tests: each one exercises a different way models are written."""
from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# seed 000 (DESIGN.md section 4): two 3x3 channels and the weights alpha of a linear head
SEED_A = np.array(
    [
        [[1, 0, 2], [3, 5, 0], [1, 1, 1]],
        [[0, 1, 0], [3, 1, 0], [1, 0, 1]],
    ],
    dtype=np.float32,
)
SEED_ALPHA = np.array([1 / 3, -2 / 3], dtype=np.float32)


class SeedNet(nn.Module):
    """An identity feature layer (its output is the input ``A``) and the head ``y = sum_k alpha_k sum_ij A_kij``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(2, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(SEED_ALPHA)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).sum(dim=(2, 3)))


class BasicBlock(nn.Module):
    """A ResNet block; like torchvision's, one in-place ReLU module is called twice."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.shortcut(x)
        return self.relu(out)


class SmallResNet(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = BasicBlock(8, 8)
        self.layer2 = BasicBlock(8, 16, stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class VGGStyle(nn.Module):
    """Convolutions with ReLU modules, then a fully connected head with ReLUs (after the last conv too)."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 6, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(6, 8, 3, padding=1),
            nn.ReLU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(8 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 16),
            nn.ReLU(),
            nn.Linear(16, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class FunctionalReluNet(nn.Module):
    """No ``nn.ReLU`` module at all: every ReLU is a functional, method or in-place call."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1)
        self.conv3 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc1 = nn.Linear(8, 12)
        self.fc2 = nn.Linear(12, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = self.conv3(x).relu_()
        x = F.relu(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), inplace=True)
        x = self.fc1(x).relu()
        return self.fc2(x)


def _relu_calls() -> dict[str, Callable[[torch.Tensor], torch.Tensor]]:
    def on_view(t: torch.Tensor) -> torch.Tensor:
        t = t * 1
        t[:, :, :, :].relu_()
        return t

    return {
        "nn.ReLU": nn.ReLU(),
        "nn.ReLU(inplace)": lambda t: nn.ReLU(inplace=True)(t * 1),
        "F.relu": F.relu,
        "F.relu(inplace)": lambda t: F.relu(t * 1, inplace=True),
        "torch.relu": torch.relu,
        "Tensor.relu": lambda t: t.relu(),
        "Tensor.relu_": lambda t: (t * 1).relu_(),
        "torch.relu_": lambda t: torch.relu_(t * 1),
        "relu_ on a view": on_view,
    }


RELU_CALLS = _relu_calls()

# hand-worked Guided Backprop / Deconvnet example on four values (HandReluNet):
#   x = [1, -2, 3, 4];  r1 = relu(x) = [1, 0, 3, 4];  z2 = t * r1 = [1, 0, -3, 4], t = [1, 1, -1, 1]
#   r2 = relu(z2) = [1, 0, 0, 4];  y = sum(u * r2), u = [2, 3, 5, -1]
#   plain:     g(r2) = u -> mask z2 > 0 -> [2, 0, 0, -1] -> * t -> [2, 0, 0, -1] -> mask x > 0 -> [2, 0, 0, -1]
#   guided:    [2, 0, 0, 0] (z2 > 0 and g > 0) -> * t -> [2, 0, 0, 0] -> (x > 0 and g > 0) -> [2, 0, 0, 0]
#   deconvnet: max(u, 0) = [2, 3, 5, 0] -> * t -> [2, 3, -5, 0] -> max(., 0) -> [2, 3, 0, 0]
HAND_X = np.array([1, -2, 3, 4], dtype=np.float32).reshape(1, 1, 1, 4)
HAND_GRADIENTS = {
    "plain": [2, 0, 0, -1],
    "guided": [2, 0, 0, 0],
    "deconvnet": [2, 3, 0, 0],
}


class HandReluNet(nn.Module):
    """``y = sum(u * relu(t * relu(x)))`` with both ReLUs written as ``relu``."""

    def __init__(self, relu: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.relu_call = relu
        self.register_buffer("t", torch.tensor([1.0, 1.0, -1.0, 1.0]))
        self.register_buffer("u", torch.tensor([2.0, 3.0, 5.0, -1.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r1 = self.relu_call(x)
        r2 = self.relu_call(self.t * r1)
        return (self.u * r2).sum(dim=(1, 2, 3))[:, None]


class TokenBlock(nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    """16x16 images, 4x4 patches -> a 4x4 grid of tokens behind one class token."""

    def __init__(self, dim: int = 16, depth: int = 2, classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.1)
        self.pos = nn.Parameter(torch.randn(1, 17, dim) * 0.1)
        self.blocks = nn.Sequential(*[TokenBlock(dim, 2) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1) + self.pos
        return self.head(self.norm(self.blocks(tokens))[:, 0])


def seeded(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with reproducible random weights and non-trivial batch-norm statistics, in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.3)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
    return model.eval()


def images(n: int, size: int = 8, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))
