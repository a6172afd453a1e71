"""What Score-CAM costs in PyTorch: ours beside pytorch-grad-cam's and torchcam's, and beside its floor.

    .venv-bench/bin/python benchmarks/bench_scorecam.py                  # quick: 512 channels at 112x112
    .venv-bench/bin/python benchmarks/bench_scorecam.py --full           # layer4: 2048 channels at 224x224 (slow)
    python benchmarks/bench_scorecam.py --layer layer3.5.conv1 --size 96 --batch-sizes 1 --skip-memory

Every Score-CAM implementation costs one forward pass per channel and image: that is the method. A full
ResNet-50 ``layer4`` has 2048 channels, so explaining one 224x224 image is 2048 forwards (minutes on 2 cores).
The quick default explains ``layer4.0.conv1`` (512 channels, the channel count of a ResNet-18's ``layer4``)
at 112x112: the same work per channel for every implementation, a quarter of the pixels. ``--full`` runs the
real thing.

A ResNet-50-shaped model (benchmarks/resnet50_torch.py, random weights, eval mode) explains its top-1 class.
Every implementation forwards the masked images 16 at a time (pytorch-grad-cam's fixed batch; ours and
torchcam's ``batch_size``). Times are medians per image over interleaved rounds (each round runs every variant
once, in a rotated order). Working memory is measured for each variant in a fresh process: the peak resident
set size during one call minus the resident size just before it (the model, the libraries and the input are
excluded, the same for every variant).

Variants:
  floor: K forwards      the model on ceil(N K / 16) batches of 16 images under ``no_grad``: the least any
                         Score-CAM can cost
  gradcam.ScoreCAM       ours, in batches mixing channels and images, masks made per batch in one buffer
  gradcam faster (K/8)   ours with ``max_channels=K/8`` ("Faster Score-CAM"): a different, cheaper map
  pytorch-grad-cam       ``pytorch_grad_cam.ScoreCAM``, where importable (needs torchvision: .venv-bench)
  torchcam               ``torchcam.methods.ScoreCAM``, where importable

Targets: ours within 1.1x of pytorch-grad-cam's time and at most a quarter of its working memory.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # pytorch-grad-cam draws a progress bar per image

import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from resnet50_torch import resnet50

BATCH = 16
QUICK = ("layer4.0.conv1", 112)
FULL = ("layer4", 224)
TIME_RATIO, MEMORY_RATIO = 1.1, 0.25
Variant = Callable[[torch.Tensor], object]


def channels_of(model: torch.nn.Module, layer: str, size: int) -> int:
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: captured.append(o.shape[1]))
    with torch.no_grad():
        model(torch.zeros(1, 3, size, size))
    handle.remove()
    return captured[0]


# --- the variants ------------------------------------------------------------------------------


def floor(model: torch.nn.Module, layer: str, channels: int) -> Variant:
    def run(x: torch.Tensor) -> None:
        batch = torch.zeros(BATCH, *x.shape[1:])
        with torch.no_grad():
            for _ in range(math.ceil(len(x) * channels / BATCH)):
                model(batch)

    return run


def ours(max_channels: Callable[[int], int | None]) -> Callable[[torch.nn.Module, str, int], Variant]:
    def build(model: torch.nn.Module, layer: str, channels: int) -> Variant:
        import gradcam

        return gradcam.ScoreCAM(model, layer=layer, batch_size=BATCH, max_channels=max_channels(channels))

    return build


def pytorch_grad_cam(model: torch.nn.Module, layer: str, channels: int) -> Variant:
    from pytorch_grad_cam import ScoreCAM

    module = model.get_submodule(layer)

    def run(x: torch.Tensor) -> object:
        with ScoreCAM(model=model, target_layers=[module]) as cam:
            cam.batch_size = BATCH
            return cam(input_tensor=x, targets=None)

    return run


def torchcam_scorecam(model: torch.nn.Module, layer: str, channels: int) -> Variant:
    from torchcam.methods import ScoreCAM

    def run(x: torch.Tensor) -> object:
        with ScoreCAM(model, layer, batch_size=BATCH, input_shape=tuple(x.shape[1:])) as extractor:
            with torch.no_grad():
                logits = model(x)
            return extractor(logits.argmax(1).tolist(), logits)

    return run


# name -> (builder, the pip package it needs, or "" for ours)
VARIANTS: dict[str, tuple[Callable[[torch.nn.Module, str, int], Variant], str]] = {
    "floor: K forwards": (floor, ""),
    "gradcam.ScoreCAM": (ours(lambda k: None), ""),
    "gradcam faster (K/8)": (ours(lambda k: max(1, k // 8)), ""),
    "pytorch-grad-cam ScoreCAM": (pytorch_grad_cam, "grad-cam"),
    "torchcam ScoreCAM": (torchcam_scorecam, "torchcam"),
}
OURS, PEER = "gradcam.ScoreCAM", "pytorch-grad-cam ScoreCAM"


def build_variants(
    model: torch.nn.Module, layer: str, channels: int, names: list[str]
) -> tuple[dict[str, Variant], dict[str, str]]:
    """The variants that can run here, and why the others cannot."""
    runnable, missing = {}, {}
    for name in names:
        builder, package = VARIANTS[name]
        try:
            runnable[name] = builder(model, layer, channels)
        except ImportError as error:
            missing[name] = f"`pip install {package}` ({error})" if package else str(error)
    return runnable, missing


# --- measuring -----------------------------------------------------------------------------------


def time_rounds(variants: dict[str, Variant], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per call of each variant over interleaved rounds.

    No warm-up call: one costs K forwards, and the one-time set-up it would hide is small beside them.
    """
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            variants[name](x)
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def working_memory_mib(variant: str, args: argparse.Namespace, batch: int) -> float | None:
    """Working memory (MiB) of one call of ``variant`` in a fresh process, or None if it failed."""
    command = [sys.executable, __file__, "--working-memory-of", variant, "--batch-sizes", str(batch)]
    command += ["--layer", args.layer, "--size", str(args.size), "--threads", str(args.threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  working memory of {variant!r} at batch {batch} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def measure_own_working_memory(variant: str, layer: str, size: int, batch: int) -> float:
    """In the child process: build, then the peak resident size during one call minus the size before it."""
    model = resnet50()
    x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    runnable, missing = build_variants(model, layer, channels_of(model, layer, size), [variant])
    if missing:
        raise SystemExit(f"{variant}: {missing[variant]}")
    before = read_status_kib("VmRSS:")
    reset_peak()
    runnable[variant](x)
    return (read_status_kib("VmHWM:") - before) / 1024


def reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def read_status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise SystemExit(f"/proc/self/status has no {field} (Linux only)")


# --- the report -----------------------------------------------------------------------------------


def table(batch: int, times: dict[str, float], memory: dict[str, float | None]) -> str:
    base = times["floor: K forwards"]
    peer_time, peer_memory = times.get(PEER), memory.get(PEER)
    lines = [
        f"### batch {batch}",
        "",
        "| variant | s / image | x floor | working MiB | x pytorch-grad-cam (time, memory) | target |",
        "|---|---:|---:|---:|---|---|",
    ]
    for name, seconds in times.items():
        mib = memory.get(name)
        versus = "-"
        if peer_time is not None:
            memory_ratio = "-" if mib is None or peer_memory is None else f"{mib / peer_memory:.2f}"
            versus = f"{seconds / peer_time:.2f}, {memory_ratio}"
        target = ""
        if name == OURS and peer_time is not None:
            time_ok = seconds / peer_time <= TIME_RATIO
            memory_ok = mib is not None and peer_memory is not None and mib / peer_memory <= MEMORY_RATIO
            target = f"time <= {TIME_RATIO}x: {'met' if time_ok else 'MISSED'}; memory <= {MEMORY_RATIO}x: " + (
                "not measured" if mib is None or peer_memory is None else "met" if memory_ok else "MISSED"
            )
        mib_cell = "-" if mib is None else f"{mib:.0f}"
        lines.append(f"| {name} | {seconds / batch:.2f} | {seconds / base:.2f} | {mib_cell} | {versus} | {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", action="store_true", help=f"layer {FULL[0]} at {FULL[1]}x{FULL[1]} (slow)")
    parser.add_argument("--layer", default=None, help=f"layer (default {QUICK[0]}, or {FULL[0]} with --full)")
    parser.add_argument(
        "--size", type=int, default=None, help=f"image side (default {QUICK[1]}, or {FULL[1]} with --full)"
    )
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true", help="time only (no subprocess per variant)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--working-memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    default_layer, default_size = FULL if args.full else QUICK
    args.layer, args.size = args.layer or default_layer, args.size or default_size
    torch.set_num_threads(args.threads)

    if args.working_memory_of:
        print(f"{measure_own_working_memory(args.working_memory_of, args.layer, args.size, args.batch_sizes[0]):.1f}")
        return

    model = resnet50()
    channels = channels_of(model, args.layer, args.size)
    names = ["floor: K forwards"] + [name for name in args.variants if name != "floor: K forwards"]
    runnable, missing = build_variants(model, args.layer, channels, names)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, ResNet-50-shaped model "
        f"at {args.size}x{args.size}, layer {args.layer!r} (K = {channels} channels), forwards of {BATCH}, "
        f"{args.rounds} interleaved round(s), medians\n"
    )
    for name, why in missing.items():
        print(f"missing: {name}: {why}")
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.size, args.size, generator=torch.Generator().manual_seed(1))
        times = time_rounds(runnable, x, args.rounds)
        memory = {} if args.skip_memory else {name: working_memory_mib(name, args, batch) for name in runnable}
        print("\n" + table(batch, times, memory), flush=True)


if __name__ == "__main__":
    main()
