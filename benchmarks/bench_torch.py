"""What Grad-CAM costs in PyTorch: our methods beside plain inference, the floors, and the peer libraries.

    python benchmarks/bench_torch.py                 # batch 1 and 8, 5 rounds, 2 threads
    python benchmarks/bench_torch.py --rounds 3 --batch-sizes 8 --skip-memory
    python benchmarks/bench_torch.py --device cuda   # on a GPU (benchmarks/gpu_check.sh)

A ResNet-50-shaped model (benchmarks/resnet50_torch.py, random weights, eval mode) at 224x224. Every variant
explains the top-1 class at ``layer4``. Times come from interleaved rounds (each round runs every variant once,
in a rotated order), so drift of the machine hits all variants alike; the table gives medians per image. Peak
memory is measured for each variant in fresh processes (median of ``--memory-repeats``): the peak resident set
size while it runs twice, after the model is built (so it includes the model, the libraries and the input).
With ``--device cuda`` the model and the input live on the GPU, each timed call ends when the GPU has finished
its work (``torch.cuda.synchronize``), and peak memory is the GPU's: the most ``torch.cuda`` held allocated
while the variant ran twice, after the model and the input were placed.

Variants:
  plain inference        ``model(x)`` under ``no_grad``: the unit of every ratio
  gradcam.*              our public classes, ``gradcam.GradCAM(model, layer="layer4")(x)``
  floor: ...             the cheapest hand-written way to the same numbers: a Grad-CAM whose graph starts at
                         the layer, and a plain input gradient with the parameters frozen
  peers                  pytorch-grad-cam, captum ``LayerGradCam`` and torchcam doing the same Grad-CAM, where
                         importable (they need torchvision; ``make bench`` builds .venv-bench for them). Captum
                         is handed the top-1 classes computed beforehand, as it cannot pick them itself.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from resnet50_torch import resnet50

LAYER = "layer4"
SIZE = 224
Variant = Callable[[torch.Tensor], object]


# --- the variants ------------------------------------------------------------------------------


def plain_inference(model: torch.nn.Module) -> Variant:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    return run


def ours(method: str) -> Callable[[torch.nn.Module], Variant]:
    def build(model: torch.nn.Module) -> Variant:
        import gradcam

        return getattr(gradcam, method)(model, layer=LAYER)

    return build


def floor_gradcam(model: torch.nn.Module) -> Variant:
    """Grad-CAM by hand, the graph started at the layer: forward under no_grad, the hook hands on a leaf."""
    layer = model.get_submodule(LAYER)

    def run(x: torch.Tensor) -> torch.Tensor:
        captured = []

        def start_graph(module, inputs, output):
            torch.set_grad_enabled(True)
            captured.append(output.detach().requires_grad_())
            return captured[0]

        handle = layer.register_forward_hook(start_graph)
        try:
            with torch.no_grad():
                logits = model(x)
                torch.set_grad_enabled(True)
                score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
                (G,) = torch.autograd.grad(score, captured[0])
        finally:
            handle.remove()
        with torch.no_grad():
            A = captured[0]
            cam = F.relu((G.mean(dim=(2, 3), keepdim=True) * A).sum(1, keepdim=True))
            cam = F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
            low = cam.amin(dim=(1, 2), keepdim=True)
            return (cam - low) / (cam.amax(dim=(1, 2), keepdim=True) - low).clamp(min=1e-12)

    return run


def floor_input_gradient(model: torch.nn.Module) -> Variant:
    """``d y / d x`` with every parameter frozen (restored afterwards), the cheapest plain input gradient."""
    parameters = list(model.parameters())

    def run(x: torch.Tensor) -> torch.Tensor:
        flags = [p.requires_grad for p in parameters]
        for p in parameters:
            p.requires_grad_(False)
        try:
            x = x.clone().requires_grad_()
            logits = model(x)
            score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
            return torch.autograd.grad(score, x)[0]
        finally:
            for p, flag in zip(parameters, flags, strict=False):
                p.requires_grad_(flag)

    return run


def pytorch_grad_cam(model: torch.nn.Module) -> Variant:
    from pytorch_grad_cam import GradCAM

    layer = model.get_submodule(LAYER)

    def run(x: torch.Tensor) -> object:
        with GradCAM(model=model, target_layers=[layer]) as cam:
            return cam(input_tensor=x, targets=None)

    return run


def captum_layer_gradcam(model: torch.nn.Module) -> Variant:
    from captum.attr import LayerAttribution, LayerGradCam

    explainer = LayerGradCam(model, model.get_submodule(LAYER))
    last: list = [None, None]  # (input, its top-1 classes): found in the warm-up call, outside the timing

    def run(x: torch.Tensor) -> torch.Tensor:
        if last[0] is not x:
            with torch.no_grad():
                last[:] = [x, model(x).argmax(1).tolist()]
        cam = explainer.attribute(x, target=last[1], relu_attributions=True)
        return LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear")

    return run


def torchcam_gradcam(model: torch.nn.Module) -> Variant:
    from torchcam.methods import GradCAM

    def run(x: torch.Tensor) -> object:
        with GradCAM(model, LAYER) as extractor:
            logits = model(x)
            return extractor(logits.argmax(1).tolist(), logits)

    return run


# name -> (builder, the pip package it needs, or "" for ours)
VARIANTS: dict[str, tuple[Callable[[torch.nn.Module], Variant], str]] = {
    "plain inference": (plain_inference, ""),
    "gradcam.GradCAM": (ours("GradCAM"), ""),
    "gradcam.GradCAMPlusPlus": (ours("GradCAMPlusPlus"), ""),
    "gradcam.GuidedGradCAM": (ours("GuidedGradCAM"), ""),
    "floor: Grad-CAM, graph from the layer": (floor_gradcam, ""),
    "floor: input gradient, frozen params": (floor_input_gradient, ""),
    "pytorch-grad-cam GradCAM": (pytorch_grad_cam, "grad-cam"),
    "captum LayerGradCam": (captum_layer_gradcam, "captum"),
    "torchcam GradCAM": (torchcam_gradcam, "torchcam"),
}
TARGETS = {"gradcam.GradCAM": 1.05, "gradcam.GradCAMPlusPlus": 1.05, "gradcam.GuidedGradCAM": 2.2}
TARGET_BATCH = 8  # the targets hold at this batch size (DESIGN.md section 7)


def build_variants(model: torch.nn.Module, names: list[str]) -> tuple[dict[str, Variant], dict[str, str]]:
    """The variants that can run here, and why the others cannot."""
    runnable, missing = {}, {}
    for name in names:
        builder, package = VARIANTS[name]
        try:
            runnable[name] = builder(model)
        except ImportError as error:
            missing[name] = f"`pip install {package}` ({error})" if package else str(error)
    return runnable, missing


# --- measuring -----------------------------------------------------------------------------------


def synchronizer(device: torch.device) -> Callable[[], None]:
    """What waits for the device's queued work: ``torch.cuda.synchronize`` on a GPU, nothing on the CPU."""
    return torch.cuda.synchronize if device.type == "cuda" else lambda: None


def time_rounds(variants: dict[str, Variant], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per call of each variant over interleaved rounds (after one warm-up call each); on a GPU
    each call is timed until the GPU has finished it."""
    sync = synchronizer(x.device)
    names = list(variants)
    for name in names:
        variants[name](x)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            sync()
            start = time.perf_counter()
            variants[name](x)
            sync()
            seconds[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seconds.items()}


def peak_rss_mib(variant: str, batch: int, threads: int, repeats: int, device: str = "cpu") -> float | None:
    """Median over ``repeats`` fresh processes of the peak memory (MiB) of ``variant`` run twice: resident on
    the CPU, allocated on the GPU with ``device="cuda"``.

    One process is not enough: with two threads the peak of the very same code varies by +-5% from run to
    run (the allocator's arenas and when freed blocks go back to the system depend on thread timing).
    """
    command = [sys.executable, __file__, "--peak-memory-of", variant, "--batch-sizes", str(batch)]
    command += ["--threads", str(threads), "--device", device]
    peaks = []
    for _ in range(repeats):
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"peak memory of {variant!r} at batch {batch} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            return None
        peaks.append(float(done.stdout.strip().splitlines()[-1]))
    return statistics.median(peaks)


def measure_own_peak(variant: str, batch: int, device: torch.device) -> float:
    """In the child process: build, reset the peak counter, run the variant twice, read the peak (MiB)."""
    model = resnet50().to(device)
    x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device)
    runnable, missing = build_variants(model, [variant])
    if missing:
        raise SystemExit(f"{variant}: {missing[variant]}")
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        runnable[variant](x)
        runnable[variant](x)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    reset_peak()
    runnable[variant](x)
    runnable[variant](x)
    return read_peak_kib() / 1024


def reset_peak() -> None:
    # Linux: writing 5 to clear_refs resets the peak resident set size (VmHWM) to the current one
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def read_peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --- the report -----------------------------------------------------------------------------------


def table(batch: int, times: dict[str, float], peaks: dict[str, float | None], memory: str = "peak MiB") -> str:
    base_time = times["plain inference"]
    base_peak = peaks.get("plain inference")
    lines = [
        f"### batch {batch}",
        "",
        f"| variant | ms/img | x plain | {memory} | x plain | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, seconds in times.items():
        peak = peaks.get(name)
        peak_cells = "| - | - " if peak is None or base_peak is None else f"| {peak:.0f} | {peak / base_peak:.2f} "
        ratio = seconds / base_time
        target = ""
        if name in TARGETS and batch == TARGET_BATCH:
            memory_ok = peak is None or base_peak is None or name == "gradcam.GuidedGradCAM" or peak / base_peak <= 1.05
            verdict = "met" if ratio <= TARGETS[name] and memory_ok else "MISSED"
            target = f"<= {TARGETS[name]}x: {verdict}"
        lines.append(f"| {name} | {1000 * seconds / batch:.1f} | {ratio:.2f} {peak_cells}| {target} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (default 2)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs (default cpu)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per peak-memory median")
    parser.add_argument("--skip-memory", action="store_true", help="time only (no subprocess per variant)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--peak-memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False); "
            "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu"
        )

    if args.peak_memory_of:
        print(f"{measure_own_peak(args.peak_memory_of, args.batch_sizes[0], device):.1f}")
        return

    model = resnet50().to(device)
    names = ["plain inference"] + [name for name in args.variants if name != "plain inference"]
    runnable, missing = build_variants(model, names)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{os.cpu_count()} CPUs"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device} ({where}), "
        f"ResNet-50-shaped model at {SIZE}x{SIZE}, layer {LAYER!r}, {args.rounds} interleaved rounds, medians\n"
    )
    for name, why in missing.items():
        print(f"missing: {name}: {why}")
    memory = "peak GPU MiB" if device.type == "cuda" else "peak MiB"
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device)
        times = time_rounds(runnable, x, args.rounds)
        peaks = {}
        if not args.skip_memory:
            peaks = {
                name: peak_rss_mib(name, batch, args.threads, args.memory_repeats, args.device) for name in runnable
            }
        print("\n" + table(batch, times, peaks, memory), flush=True)


if __name__ == "__main__":
    main()
