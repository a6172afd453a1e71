"""The library's own work per image, beside the peers', on a model that costs almost nothing.

    python benchmarks/bench_overhead.py                     # overhead table: ours and the peers, 15 rounds
    python benchmarks/bench_overhead.py --command           # also: the whole command vs the bare loop, PNG stages
    python benchmarks/bench_overhead.py --device cuda       # on a GPU machine (benchmarks/gpu_check.sh)
    python benchmarks/bench_overhead.py --model resnet50    # the same on the ResNet-50-shaped model (layer4)

The near-free model (``near_free``): a 32x32 average pool (224 px -> 7x7), a 1x1 convolution to 2048
channels with a ReLU (the explained layer, ``features``: the shape of a ResNet-50's ``layer4``), global
average pooling and a dense layer to 1000 classes. Its forward and backward cost little, so what remains
of a method's time is the library's own work.

Overhead of a variant = its time minus the unit's, in the same round, per image; the table gives the median
over interleaved rounds (each round runs every variant once, in a rotated order), at batch 64 and 224 px on
one thread by default, and beside it the overhead of the fastest runs (each variant's fastest minus the
unit's fastest: other jobs on a shared machine only ever add time). Time is the process's CPU time on the CPU
(it moves much less than the wall clock with the load of other jobs on a shared machine), the wall clock on a
GPU. The unit is the model's forward
plus the backward to the layer, written by hand (the graph starts at the layer): what any Grad-CAM must run.
A second table times our NumPy stages alone, the float64 reference formulas beside the float32 path the
methods run, on one probe; the 15% box is timed there. Every variant returns upsampled, normalized maps at
the input size, top-1 class. With ``--model resnet50`` the model is ``resnet50_torch.resnet50`` at ``layer4``: its
unit is the model's own cost, the rate a GPU sustains for Grad-CAM.

  gradcam.*              our classes, ``gradcam.GradCAM(model, layer="features")(x).maps``; "+ boxes" adds
                         ``.boxes()`` (the paper's 15% box of every map)
  pytorch-grad-cam       its GradCAM, GradCAMPlusPlus, LayerCAM, HiResCAM (they upsample and normalize)
  captum                 ``LayerGradCam`` with ``LayerAttribution.interpolate`` (bilinear) and a min-max
                         normalization in torch (captum has none); handed the top-1 classes, found outside the timing
  torchcam               its GradCAM, GradCAMpp, LayerCAM (normalized at the layer's size), upsampled with
                         ``F.interpolate`` (bilinear)

The peers need torchvision, which does not import beside the project's torch: run this with .venv-bench
(``make .venv-bench/.installed``); without them it prints which are missing and measures ours.

``--command`` adds, on every core: ``gradcam explain --no-save-maps`` run in this process on JPEG and on PNG
files with this model (loaded once, as ``--model benchmarks/bench_overhead.py:near_free`` loads it), and with
PNG maps, beside the bare loop of ``gradcam.GradCAM`` over the same images in memory, with one torch thread
and with one per core (wall clock and CPU time; each command run divided by the faster bare loop of its own
round); and the PNG path's CPU time per image and stage (decode, model, maps, encode, write) on one thread.
The whole process runs with ``OMP_WAIT_POLICY=PASSIVE``, as the command sets it (``gradcam.cli.explain``).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# Idle OpenMP threads sleep, as under the command (gradcam.cli.explain sets the same before the model loads):
# the bare loop and the command run under one policy. It must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from resnet50_torch import resnet50

import gradcam
from gradcam import reference as ref
from gradcam.batch.job import BatchResults
from gradcam.batch.loading import LoadedModel, ModelSpec, scaled
from gradcam.batch.reader import decode_batch
from gradcam.batch.records import written_whole
from gradcam.batch.sources import InputItem
from gradcam.cli.explain import run_explain
from gradcam.reference import fast

LAYER = "features"
SIZE = 224
UNIT = "unit: forward + backward to the layer"
BARE = "bare fast-path loop (in-memory arrays)"
BOX = "15% box of every map"
Variant = Callable[[torch.Tensor], object]
Builder = Callable[[nn.Module, str], Variant]


class NearFree(nn.Module):
    """224 px -> 32x32 average pool -> 1x1 convolution to 2048 channels + ReLU (7x7) -> pooling -> 1000 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.pool = nn.AvgPool2d(32)
        self.features = nn.Sequential(nn.Conv2d(3, 2048, 1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self.pool(x)))


def near_free() -> nn.Module:
    """The model, seeded, in eval mode: the factory ``--model benchmarks/bench_overhead.py:near_free``."""
    torch.manual_seed(0)
    return NearFree().eval()


# --- the variants ------------------------------------------------------------------------------------


MODELS = {"near_free": (near_free, LAYER), "resnet50": (resnet50, "layer4")}


def unit(model: nn.Module, layer_name: str) -> Variant:
    """Forward under ``no_grad`` until the layer's hook starts the graph; the gradient of the top-1 scores."""
    layer = model.get_submodule(layer_name)

    def run(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        captured = []

        def start_graph(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
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
        return captured[0].detach(), G

    return run


def ours(method: str, boxes: bool = False) -> Builder:
    def build(model: nn.Module, layer: str) -> Variant:
        cam = getattr(gradcam, method)(model, layer=layer)
        return (lambda x: cam(x).boxes()) if boxes else (lambda x: cam(x).maps)

    return build


def pytorch_grad_cam(method: str) -> Builder:
    def build(model: nn.Module, layer: str) -> Variant:
        import pytorch_grad_cam as pgc

        cls, module = getattr(pgc, method), model.get_submodule(layer)

        def run(x: torch.Tensor) -> np.ndarray:
            with cls(model=model, target_layers=[module]) as cam:
                return cam(input_tensor=x, targets=None)

        return run

    return build


def min_max(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin(dim=(-2, -1), keepdim=True)
    return (maps - low) / (maps.amax(dim=(-2, -1), keepdim=True) - low).clamp(min=1e-12)


def captum_gradcam(model: nn.Module, layer: str) -> Variant:
    from captum.attr import LayerAttribution, LayerGradCam

    explainer = LayerGradCam(model, model.get_submodule(layer))
    last: list = [None, None]  # (input, its top-1 classes): found in the warm-up call, outside the timing

    def run(x: torch.Tensor) -> torch.Tensor:
        if last[0] is not x:
            with torch.no_grad():
                last[:] = [x, model(x).argmax(1).tolist()]
        cam = explainer.attribute(x, target=last[1], relu_attributions=True)
        return min_max(LayerAttribution.interpolate(cam, x.shape[-2:], interpolate_mode="bilinear"))

    return run


def torchcam(method: str) -> Builder:
    def build(model: nn.Module, layer: str) -> Variant:
        from torchcam import methods

        cls = getattr(methods, method)

        def run(x: torch.Tensor) -> torch.Tensor:
            with cls(model, layer) as extractor:
                logits = model(x)
                maps = extractor(logits.argmax(1).tolist(), logits)[0]
            with torch.no_grad():
                return F.interpolate(maps[:, None], size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]

        return run

    return build


OURS = {"GradCAM": "Grad-CAM", "GradCAMPlusPlus": "Grad-CAM++", "LayerCAM": "LayerCAM", "HiResCAM": "HiResCAM"}
# name -> (builder, the pip package it needs, or "" for ours)
VARIANTS: dict[str, tuple[Builder, str]] = {
    UNIT: (unit, ""),
    **{f"gradcam {label}": (ours(cls), "") for cls, label in OURS.items()},
    "gradcam Grad-CAM + boxes": (ours("GradCAM", boxes=True), ""),
    **{f"pytorch-grad-cam {label}": (pytorch_grad_cam(cls), "grad-cam") for cls, label in OURS.items()},
    "captum Grad-CAM": (captum_gradcam, "captum"),
    "torchcam Grad-CAM": (torchcam("GradCAM"), "torchcam"),
    "torchcam Grad-CAM++": (torchcam("GradCAMpp"), "torchcam"),
    "torchcam LayerCAM": (torchcam("LayerCAM"), "torchcam"),
}
TARGET_MS = 0.25  # overhead per image of each of our four methods
TARGET_BOX_MS = 0.2  # the box, on top of the method's (the stage table times it on its own)


def build_variants(model: nn.Module, layer: str) -> tuple[dict[str, Variant], dict[str, str]]:
    """The variants that can run here, and why the others cannot."""
    runnable, missing = {}, {}
    for name, (builder, package) in VARIANTS.items():
        try:
            runnable[name] = builder(model, layer)
        except ImportError as error:
            missing[name] = f"`pip install {package}` ({error})"
    return runnable, missing


# --- measuring -------------------------------------------------------------------------------------------


def clock_for(device: torch.device) -> tuple[Callable[[], float], Callable[[], None]]:
    """How to time a call on ``device``: on the CPU, the CPU time of the whole process (every thread the call
    wakes counts, and on a shared machine it moves much less with the neighbours' load than the wall clock);
    on a GPU, the wall clock after the device has finished its queued work."""
    if device.type == "cuda":
        return time.perf_counter, torch.cuda.synchronize
    return time.process_time, lambda: None


def time_rounds(
    variants: dict[str, Callable[[], object]],
    rounds: int,
    clock: Callable[[], float] = time.perf_counter,
    sync: Callable[[], None] = lambda: None,
) -> dict[str, list[float]]:
    """Seconds of each call, per variant, over interleaved rounds in a rotated order (after one warm-up each),
    with Python's garbage collector run between calls rather than at random points inside them."""
    names = list(variants)
    for name in names:
        variants[name]()
    seconds: dict[str, list[float]] = {name: [] for name in names}
    gc.disable()
    try:
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                gc.collect()
                sync()
                start = clock()
                variants[name]()
                sync()
                seconds[name].append(clock() - start)
    finally:
        gc.enable()
    return seconds


def overhead_table(model: nn.Module, layer: str, x: torch.Tensor, rounds: int) -> str:
    """Per image: each variant's time, and its overhead (minus the unit's time of the same round)."""
    runnable, missing = build_variants(model, layer)
    for name, why in missing.items():
        print(f"missing: {name}: {why}")
    calls = {name: (lambda run=run: run(x)) for name, run in runnable.items()}
    seconds = time_rounds(calls, rounds, *clock_for(x.device))
    n = len(x)
    per_round = {name: [1000 * (s - u) / n for s, u in zip(times, seconds[UNIT], strict=True)]
                 for name, times in seconds.items()}
    lines = [
        "| variant | ms/img | x unit | overhead ms/img | overhead ms/img, best runs | target |",
        "|---|---:|---:|---:|---:|---|",
    ]
    unit_ms = 1000 * statistics.median(seconds[UNIT]) / n
    unit_best = 1000 * min(seconds[UNIT]) / n
    for name, times in seconds.items():
        overhead = statistics.median(per_round[name])
        # other jobs only ever add time: the fastest run of each variant is the one they disturbed least
        best = 1000 * min(times) / n - unit_best
        target = ""
        if name.startswith("gradcam") and not name.endswith("boxes"):
            target = f"<= {TARGET_MS}: {'met' if overhead <= TARGET_MS else 'MISSED'}"
        ms = 1000 * statistics.median(times) / n
        cells = "- | -" if name == UNIT else f"{overhead:.3f} | {best:.3f}"
        lines.append(f"| {name} | {ms:.3f} | {ms / unit_ms:.2f} | {cells} | {target} |")
    lines.append(f"\nthe unit runs {1000 / unit_ms:.0f} images/s on this device")
    return "\n".join(lines)


def stage_table(model: nn.Module, layer: str, x: torch.Tensor, rounds: int) -> str:
    """Our NumPy work after the backend, stage by stage: the float64 reference formulas and the float32 path
    the methods run, on one probe (the backend's own share is the whole overhead minus these)."""
    probe = gradcam.GradCAM(model, layer=layer).probe(x, None)
    A, G = probe.activations[layer], probe.gradients[layer]
    raw = fast.weighted_map(A, fast.grad_cam_weights(G))
    maps = fast.upsample_normalized(raw, (SIZE, SIZE))
    stages = {
        "Grad-CAM map (weights, weighted sum)": (lambda: ref.grad_cam(A, G),
                                                 lambda: fast.weighted_map(A, fast.grad_cam_weights(G))),
        "Grad-CAM++ map": (lambda: ref.grad_cam_pp(A, G),
                           lambda: fast.weighted_map(A, fast.grad_cam_pp_weights(A, G))),
        "LayerCAM map": (lambda: ref.layer_cam(A, G), lambda: fast.layer_cam(A, G)),
        "HiResCAM map": (lambda: ref.hires_cam(A, G), lambda: fast.hires_cam(A, G)),
        "upsample + normalize to 224x224": (lambda: ref.normalize(ref.upsample(raw, (SIZE, SIZE))),
                                            lambda: fast.upsample_normalized(raw, (SIZE, SIZE))),
        BOX: (lambda: [ref.bounding_box(m) for m in maps], lambda: fast.bounding_boxes(maps)),
    }
    variants = {f"{stage}|{kind}": run for stage, pair in stages.items() for kind, run in zip("rf", pair, strict=True)}
    seconds = time_rounds(variants, rounds, time.process_time)
    n = len(x)
    lines = ["| stage | float64 reference ms/img | float32 fast path ms/img | x | target |", "|---|---:|---:|---:|---|"]
    for stage in stages:
        before, after = (1000 * statistics.median(seconds[f"{stage}|{k}"]) / n for k in "rf")
        target = f"<= {TARGET_BOX_MS}: {'met' if after <= TARGET_BOX_MS else 'MISSED'}" if stage == BOX else ""
        lines.append(f"| {stage} | {before:.3f} | {after:.3f} | {before / after:.1f} | {target} |")
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------------------


def write_images(folder: Path, n: int) -> np.ndarray:
    """``n`` random 224x224 pictures (smooth colour fields with a little noise), returned as uint8 and written
    twice: as PNG files in ``folder / "png"`` and as JPEG files (quality 90) in ``folder / "jpeg"``."""
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, size=(n * 3, 7, 7)).astype(np.float32)
    images = ref.upsample(coarse, (SIZE, SIZE)).reshape(n, 3, SIZE, SIZE).transpose(0, 2, 3, 1)
    images = (images + rng.normal(0, 4, size=images.shape)).clip(0, 255).astype(np.uint8)
    for kind in ("png", "jpeg"):
        (folder / kind).mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        picture = Image.fromarray(image)
        picture.save(folder / "png" / f"{i:05d}.png")
        picture.save(folder / "jpeg" / f"{i:05d}.jpg", quality=90)
    return images


def command_table(images: np.ndarray, folder: Path, out: Path, batch: int, rounds: int) -> str:
    """Images per second (wall clock) and CPU ms per image (every thread) of the bare loop and of ``gradcam
    explain``, over interleaved rounds. The command reads the files, decodes and explains them and writes the
    records; the bare loop only explains the decoded images, from memory.

    The bare loop runs with one torch thread and with one per core; the faster of the two in each round is the
    reference, and each command run is divided by the reference of its own round (runs made back to back, so
    that the load of other jobs on a shared machine hits both alike). The command runs as the CLI does, torch
    with one thread per core.
    """
    model = near_free()
    loaded = LoadedModel(model, "torch", "near_free", (SIZE, SIZE), scaled("NCHW"), layer=LAYER)
    spec = ModelSpec.from_arguments(f"{Path(__file__).resolve()}:near_free", None, None, None)
    cam = gradcam.GradCAM(model, layer=LAYER)
    prepare = scaled("NCHW")
    cores = os.cpu_count() or 1

    def bare(threads: int) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(threads)
            for i in range(0, len(images), batch):
                cam(prepare(images[i : i + batch]))

        return run

    def command(inputs: str, save_maps: bool) -> Callable[[], None]:
        def run() -> None:
            torch.set_num_threads(cores)
            with contextlib.redirect_stdout(io.StringIO()):
                status = run_explain(loaded, [folder / inputs], out, ["gradcam"], LAYER, None, None, batch, {},
                                     overwrite=True, save_maps=save_maps, model_spec=spec)
            if status != 0:
                raise SystemExit(f"gradcam explain failed with status {status}")

        return run

    bares = {f"{BARE}, 1 thread": bare(1), f"{BARE}, {cores} threads": bare(cores)}
    variants = {
        **bares,
        "gradcam explain --no-save-maps, JPEG inputs": command("jpeg", False),
        "gradcam explain --no-save-maps, PNG inputs": command("png", False),
        "gradcam explain, JPEG inputs, PNG maps": command("jpeg", True),
    }
    names = list(variants)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for name in names:
        variants[name]()  # warm-up
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            started, used = time.perf_counter(), time.process_time()
            variants[name]()
            wall[name].append(time.perf_counter() - started)
            cpu[name].append(time.process_time() - used)
    reference = [min(times) for times in zip(*(wall[name] for name in bares), strict=True)]
    lines = [
        "| variant | images/s, best run | images/s, median | x bare loop, same round: median (best) | CPU ms/image |",
        "|---|---:|---:|---:|---:|",
    ]
    for name in names:
        ratios = [ref_s / s for ref_s, s in zip(reference, wall[name], strict=True)]
        lines.append(
            f"| {name} | {len(images) / min(wall[name]):.0f} | {len(images) / statistics.median(wall[name]):.0f} "
            f"| {statistics.median(ratios):.2f} ({max(ratios):.2f}) "
            f"| {1000 * statistics.median(cpu[name]) / len(images):.2f} |"
        )
    return "\n".join(lines)


def cpu_ms(work: Callable[[], object], count: int, repeats: int = 5) -> float:
    """Median CPU milliseconds per item of ``work`` (which handles ``count`` items)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return 1000 * statistics.median(times) / count


def png_stage_table(images: np.ndarray, folder: Path, out: Path, batch: int) -> str:
    """CPU ms per image of each stage of the PNG path, on one thread: decode, model, maps, encode, write."""
    model = near_free()
    x = torch.from_numpy(scaled("NCHW")(images[:batch]))
    cam = gradcam.GradCAM(model, layer=LAYER)
    results = BatchResults({"gradcam": cam(x)})

    def encode() -> list[dict[str, bytes]]:
        return [results.pictures("gradcam", row, images[row]) for row in range(batch)]

    pictures = encode()
    out.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        for row, kinds in enumerate(pictures):
            for kind, data in kinds.items():
                with written_whole(out / f"{row:05d}_{kind}.png") as file:
                    file.write(data)

    def decode(kind: str) -> Callable[[], object]:
        items = [InputItem(str(path), path.name) for path in sorted((folder / kind).iterdir())[:batch]]
        return lambda: decode_batch(items, (SIZE, SIZE), keep_originals=True)

    model_ms = cpu_ms(lambda: unit(model, LAYER)(x), batch)
    stages = {
        "decode a 224x224 PNG (read, decode, keep for the overlay)": cpu_ms(decode("png"), batch),
        "decode a 224x224 JPEG, quality 90": cpu_ms(decode("jpeg"), batch),
        "model (forward + backward to the layer)": model_ms,
        "maps (Grad-CAM maps, the 15% box, channel ranking)": cpu_ms(
            lambda: BatchResults({"gradcam": cam(x)}), batch) - model_ms,
        "encode (heat map + overlay PNGs)": cpu_ms(encode, batch),
        "write (two PNG files, written whole)": cpu_ms(write, batch),
    }
    lines = ["| stage | CPU ms per image |", "|---|---:|"]
    lines += [f"| {name} | {ms:.3f} |" for name, ms in stages.items()]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the overhead tables")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where the model runs (default cpu)")
    parser.add_argument("--model", choices=list(MODELS), default="near_free")
    parser.add_argument("--command", action="store_true", help="also the whole command and the PNG stages")
    parser.add_argument("--images", type=int, default=1024, help="images for --command")
    parser.add_argument("--command-rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            f"--device cuda: torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False); "
            "run on a machine with an NVIDIA GPU and a CUDA build of torch, or use --device cpu"
        )
    build, layer = MODELS[args.model]
    model = build().to(device)
    x = torch.rand(args.batch, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)).to(device)
    print(f"torch {torch.__version__}, numpy {np.__version__}, {torch.get_num_threads()} thread(s), "
          f"{os.cpu_count()} CPUs, device {device}, model {args.model} at {layer!r}, batch {args.batch}, "
          f"{SIZE}x{SIZE}, {args.rounds} interleaved rounds, medians\n", flush=True)
    print(overhead_table(model, layer, x, args.rounds), "\n", flush=True)
    print(stage_table(model, layer, x, args.rounds), "\n", flush=True)
    if args.command:
        torch.set_num_threads(os.cpu_count() or 1)
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / "images"
            images = write_images(folder, args.images)
            print(f"the command: {args.images} images, batch {args.batch}, {torch.get_num_threads()} threads, "
                  f"median of {args.command_rounds} rounds\n", flush=True)
            print(command_table(images, folder, Path(tmp) / "out", args.batch, args.command_rounds), "\n", flush=True)
            torch.set_num_threads(1)
            print(png_stage_table(images, folder, Path(tmp) / "stages", args.batch), flush=True)


if __name__ == "__main__":
    main()
