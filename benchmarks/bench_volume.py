"""What a 3-D Grad-CAM costs against the model's plain inference: an r3d-like video network in PyTorch on CPU.

    python benchmarks/bench_volume.py                      # a clip batch (8, 3, 16, 112, 112), 3 rounds, 2 threads
    python benchmarks/bench_volume.py --rounds 5 --batch 4 --frames 8

The network follows torchvision's r3d_18 in small (random weights, eval mode): a stem ``Conv3d(3->16, 3x7x7,
stride (1, 2, 2))``-BN-ReLU, then three basic residual blocks of 16, 32 and 64 channels (the last two halve time,
height and width, with a 1x1x1 projection on the shortcut), global average pooling and a 400-class dense layer
(Kinetics-400's). Grad-CAM explains the top-1 class at the last block, ``layer3``: a ``(N, 64, 4, 14, 14)`` map
brought to the clip's 16x112x112 by trilinear upsampling.

Times come from interleaved rounds (each round runs both variants, the order alternated), medians per clip:

  plain inference     ``model(x)`` under ``no_grad``: the unit of the ratio
  gradcam.GradCAM     ``gradcam.GradCAM(model, "layer3")(x)``: forward, backward to the layer, the float64
                      trilinear upsampling and normalisation of the maps
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import gradcam

LAYER = "layer3"


class BasicBlock(nn.Module):
    """``ReLU(shortcut(x) + BN(conv(ReLU(BN(conv(x))))))``; the shortcut projects when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU()
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


class R3DSmall(nn.Module):
    def __init__(self, classes: int = 400) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(3, 16, (3, 7, 7), stride=(1, 2, 2), padding=(1, 3, 3), bias=False),
            nn.BatchNorm3d(16),
            nn.ReLU(),
        )
        self.layer1 = BasicBlock(16, 16, 1)
        self.layer2 = BasicBlock(16, 32, 2)
        self.layer3 = BasicBlock(32, 64, 2)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return self.fc(x.mean(dim=(2, 3, 4)))


def model_with_statistics(clip: torch.Tensor) -> nn.Module:
    """The network with random weights and batch-norm statistics from one clip, in eval mode."""
    torch.manual_seed(0)
    model = R3DSmall()
    with torch.no_grad():
        model.train()(clip[:1])
    return model.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = torch.rand(args.batch, 3, args.frames, args.size, args.size, generator=torch.Generator().manual_seed(1))
    model = model_with_statistics(clip)
    explainer = gradcam.GradCAM(model, LAYER, quiet=True)

    def plain() -> None:
        with torch.no_grad():
            model(clip)

    def grad_cam() -> None:
        maps = explainer(clip).maps
        assert maps.shape == (args.batch, args.frames, args.size, args.size)

    variants = {"plain inference": plain, "gradcam.GradCAM": grad_cam}
    for run in variants.values():  # warm-up: allocator, first-call caches
        run()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_index in range(args.rounds):
        order = list(variants) if round_index % 2 == 0 else list(reversed(variants))
        for name in order:
            start = time.perf_counter()
            variants[name]()
            times[name].append(time.perf_counter() - start)
    unit = statistics.median(times["plain inference"])
    print(f"r3d-like, clips ({args.batch}, 3, {args.frames}, {args.size}, {args.size}), torch {torch.__version__}, "
          f"CPU, {args.threads} threads, {args.rounds} rounds (medians)")
    print(f"{'variant':<18} {'s / batch':>10} {'ms / clip':>10} {'x plain':>8}")
    for name, measured in times.items():
        median = statistics.median(measured)
        print(f"{name:<18} {median:>10.3f} {1000 * median / args.batch:>10.1f} {median / unit:>8.2f}")


if __name__ == "__main__":
    main()
