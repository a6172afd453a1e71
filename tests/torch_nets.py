"""Small PyTorch models for the backend tests: each one exercises a different way models are written.

Also the independent references the tests compare the backend with (autograd by hand, the model split at a
layer) and a snapshot of everything the backend must leave as it found it. The hand-worked numbers come from
``seeds.py``.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from seeds import HAND_T, HAND_U, SEED_ALPHA, SEED_W
from torch import nn


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


class SeedDenseNet(nn.Module):
    """Input ``O`` (N, 1, 2, 2) -> identity ``features`` -> ``y1 = sum_ij O_ij W_ij`` with ``W = (0, 1, 0, 1)``."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.head = nn.Linear(4, 1, bias=False)
        with torch.no_grad():
            self.head.weight.copy_(torch.from_numpy(SEED_W)[None])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.features(x), 1))


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


def split_small_resnet(model: SmallResNet, x: np.ndarray) -> tuple[np.ndarray, Callable[[torch.Tensor], Any]]:
    """``SmallResNet`` cut at ``layer2``: that layer's output for ``x`` and the head from there to the logits."""
    with torch.no_grad():
        a = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(torch.as_tensor(x))))))

    def head(t: torch.Tensor) -> torch.Tensor:
        return model.fc(torch.flatten(model.avgpool(t), 1))

    return a.numpy(), head


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


class SharedConvNet(nn.Module):
    """One ``Conv2d`` module called twice in the forward."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.fc = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(torch.relu(self.conv(x))).mean(dim=(2, 3)))


def split_shared_conv(model: SharedConvNet, x: np.ndarray) -> tuple[np.ndarray, Callable[[torch.Tensor], Any]]:
    """The output of the second call of ``conv`` for ``x`` and the head from there to the logits."""
    with torch.no_grad():
        second = model.conv(torch.relu(model.conv(torch.as_tensor(x))))

    def head(t: torch.Tensor) -> torch.Tensor:
        return model.fc(t.mean(dim=(2, 3)))

    return second.numpy(), head


class CountingNet(nn.Module):
    """A small conv net with two classes that counts how many times its forward has run."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 2)
        self.runs = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.runs += 1
        return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))


class Segmenter(nn.Module):
    """A per-pixel classifier: ``body`` (3x3 conv) -> ReLU -> a 1x1 conv to two class maps (N, 2, H, W)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Conv2d(3, 4, 3, padding=1)
        self.classes = nn.Conv2d(4, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classes(torch.relu(self.body(x)))


def region(out: torch.Tensor) -> torch.Tensor:
    """A ``Segmenter`` target: the class-1 map summed over rows and columns 2..4, one score per image."""
    return out[:, 1, 2:5, 2:5].sum(dim=(1, 2))


class TokenNet(nn.Module):
    """The pixels as tokens: ``tokens`` outputs (N, H*W, C) and the head averages them, so the gradient of
    output ``c`` is ``1/(H*W)`` on channel ``c`` of every token."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(x.flatten(2).transpose(1, 2)).mean(dim=1)


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


class HandReluNet(nn.Module):
    """``y = sum(u * relu(t * relu(x)))`` (``seeds.HAND_*``: x is one channel of four pixels), with both ReLUs
    written as ``relu``."""

    def __init__(self, relu: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.relu_call = relu
        self.register_buffer("t", torch.from_numpy(HAND_T.copy()))
        self.register_buffer("u", torch.from_numpy(HAND_U.copy()))

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


class DeadChannelNet(nn.Module):
    """conv-relu-conv-relu, mean pooling, a dense layer; channel 0 of ``features`` is dead (0 everywhere: a flat
    Score-CAM mask, weight 0). For the perturbation methods' one-masked-image-at-a-time checks."""

    def __init__(self, channels: int, classes: int, stem_bias: float | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.features = nn.Sequential(nn.Conv2d(6, channels, 3, stride=2, padding=1), nn.ReLU())
        self.fc = nn.Linear(channels, classes)
        with torch.no_grad():
            if stem_bias is not None:
                self.stem[0].bias.fill_(stem_bias)
            self.features[0].bias.fill_(0.3)
            self.features[0].weight[0] = 0.0
            self.features[0].bias[0] = -1.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(self.stem(x)).mean(dim=(2, 3)))


class Failing(nn.Module):
    """Raises in its forward after ``net.layer1`` has run (and turned grad mode on)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = seeded(SmallResNet())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.net.layer1(self.net.relu(self.net.bn1(self.net.conv1(x))))
        raise RuntimeError("boom")


def prepared(model: nn.Module) -> nn.Module:
    """``model`` with known gradients on some parameters, one frozen parameter and a batch norm in training
    mode: state that a backend must not disturb."""
    params = list(model.parameters())
    for i, p in enumerate(params):
        if i % 3 == 0:
            p.grad = torch.full_like(p, 0.5 + i)
    params[1].requires_grad_(False)
    model.get_submodule("layer1.bn2" if hasattr(model, "layer1") else "net.layer1.bn2").train()
    return model


def hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) + len(m._backward_pre_hooks)
        for m in model.modules()
    )


def model_state(model: nn.Module) -> dict[str, Any]:
    """Everything of ``model`` and of torch's global state that a backend touches, in a form that compares with
    ``==``: modes, ``requires_grad`` flags, parameter gradients, the modules themselves, parameters and
    buffers, hooks, grad mode and the ``TorchFunctionMode`` stack."""
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.numpy().tobytes() for p in model.parameters()],
        "modules": [id(m) for m in model.modules()],
        "state_dict": {k: v.detach().numpy().tobytes() for k, v in model.state_dict().items()},
        "hooks": hook_count(model),
        "grad mode": torch.is_grad_enabled(),
        "function mode": torch.overrides._is_torch_function_mode_enabled(),
    }


def gradient_by_hand(
    head: Callable[[torch.Tensor], torch.Tensor], activation: np.ndarray, targets: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, d sum_n y_n / d A)`` for ``y_n = head(A)[n, targets[n]]``, by autograd from the layer on."""
    a = torch.tensor(activation, requires_grad=True)
    with torch.enable_grad():
        scores = head(a).gather(1, torch.as_tensor(np.asarray(targets))[:, None])[:, 0]
        (grad,) = torch.autograd.grad(scores.sum(), a)
    return scores.detach().numpy(), grad.numpy()


def input_gradient_by_hand(model: nn.Module, x: np.ndarray, targets: Sequence[int]) -> np.ndarray:
    """``d sum_n y_n / d x`` for ``y_n = model(x)[n, targets[n]]``, by autograd."""
    xg = torch.tensor(x, requires_grad=True)
    with torch.enable_grad():
        total = model(xg).gather(1, torch.as_tensor(np.asarray(targets))[:, None]).sum()
        (grad,) = torch.autograd.grad(total, xg)
    return grad.numpy()


def logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The model's outputs for a NumPy batch, as NumPy."""
    with torch.no_grad():
        return model(torch.as_tensor(x)).numpy()


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
