"""Whole data sets: what ``gradcam explain`` keeps of the bare Grad-CAM speed, locally and with Ray Data.

    python benchmarks/bench_scale.py                       # 1024 images, batch 16, Ray with 1 and 2 actors
    python benchmarks/bench_scale.py --images 256 --skip-ray
    python benchmarks/bench_scale.py --device cuda --num-gpus 1 --actors 1   # on a GPU machine

Synthetic shapes (``gradcam.datasets.make_split``) at 224x224, written as PNG files, through the ResNet-50-shaped
model (benchmarks/resnet50_torch.py, random weights), Grad-CAM at ``layer4``, top-1 class, PyTorch's default
threads. Rows:

  bare loop              ``GradCAM(model, layer="layer4")(x)`` over in-memory uint8 batches: the unit of the ratios
  local engine           ``gradcam explain FOLDER --no-save-maps``: lists and decodes the PNGs in the reader thread,
                         explains, writes records.jsonl and summary.json (the model is already loaded, as for
                         the bare loop)
  local engine + PNGs    the same with the default heat-map and overlay PNGs per image: the cost of writing maps
  ray engine, N actors   ``--engine ray --actors N`` on a local Ray instance started beforehand (not timed):
                         Ray Data decoding tasks and N explainer actors, actor start and model loading in
                         the actors included

Each round runs every variant once, in a rotated order; the table gives each variant's median round. Every
variant is timed by the wall clock and by CPU time (this process and every process below it, Ray's
included). On a machine shared with other work the wall clock follows the neighbours' load; CPU time much
less, so "x bare loop, by CPU time" (the bare loop's CPU time per image over the variant's) is the share of
the bare loop's speed that a variant keeps on a machine of its own, when both keep every core busy.

Also printed: per-image costs of the stages (the NumPy part of Grad-CAM, reading and decoding, encoding
the PNGs, a record) and bytes per image, which docs/scaling.md uses to size a run of 10^7 images.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]

from resnet50_torch import resnet50

import gradcam
from gradcam import reference as ref
from gradcam.batch.loading import LoadedModel, ModelSpec, scaled
from gradcam.cli.explain import EngineOptions, run_explain
from gradcam.datasets import make_split
from gradcam.images import read_image, resize

LAYER = "layer4"
SIZE = 224
FACTORY = f"{HERE / 'resnet50_torch.py'}:resnet50"
BARE = "bare loop (in-memory arrays)"


def write_images(folder: Path, n: int) -> np.ndarray:
    """``n`` synthetic 224x224 images as PNG files in ``folder``; returns them as one uint8 array."""
    images = make_split("single", n, seed=0, size=SIZE).images
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:05d}.png")
    return images


def bare_loop(cam: gradcam.GradCAM, images: np.ndarray, batch_size: int) -> None:
    prepare = scaled("NCHW")
    for i in range(0, len(images), batch_size):
        cam(prepare(images[i : i + batch_size]))


def engine_run(
    loaded: LoadedModel, folder: Path, out_dir: Path, batch_size: int, save_maps: bool, engine: EngineOptions
) -> None:
    device = str(next(loaded.model.parameters()).device)
    status = run_explain(
        loaded, [folder], out_dir, ["gradcam"], LAYER, None, None, batch_size,
        {"n_samples": 8, "noise_level": 0.15}, overwrite=True, save_maps=save_maps,
        model_spec=ModelSpec.from_arguments(FACTORY, None, None, None if device == "cpu" else device), engine=engine,
    )
    if status != 0:
        raise SystemExit(f"the {engine.name} engine failed with status {status}")


@contextlib.contextmanager
def ray_instance() -> Iterator[None]:
    """A local Ray instance around one Ray variant, started and stopped outside the clock, so that Ray's
    idle processes cost the other variants nothing."""
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="ERROR")
    time.sleep(5)  # the idle workers Ray prestarts finish booting before the clock starts
    try:
        yield
    finally:
        ray.shutdown()


def cpu_seconds() -> float:
    """CPU time of this process and every process below it (Ray's included), living or already reaped."""
    total = 0.0
    for process in [psutil.Process(), *psutil.Process().children(recursive=True)]:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system + times.children_user + times.children_system
    return total


def measure(
    run: Callable[[], None], around: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
) -> tuple[float, float]:
    """Wall and CPU seconds of ``run`` (inside ``around``, which is not timed)."""
    with around():
        wall, cpu = time.perf_counter(), cpu_seconds()
        run()
        return time.perf_counter() - wall, cpu_seconds() - cpu


def per_image(work: Callable[[Any], Any], items: list) -> float:
    """CPU seconds per item of ``work`` (CPU time, not wall time: the neighbours' load barely shows in it)."""
    start = time.process_time()
    for item in items:
        work(item)
    return (time.process_time() - start) / len(items)


def stage_costs(
    model: torch.nn.Module, folder: Path, images: np.ndarray, batch_size: int
) -> tuple[dict[str, float], dict[str, float]]:
    """CPU seconds per image of each stage but the model, on the first batches, and bytes per image of what
    is read and written."""
    paths = sorted(folder.glob("*.png"))[: 4 * batch_size]
    photos = folder.parent / "photos"
    photos.mkdir(exist_ok=True)
    for i, path in enumerate(paths):  # photo-sized JPEGs, the usual format of large image data sets
        Image.open(path).resize((500, 375), Image.Resampling.BILINEAR).save(photos / f"{i:05d}.jpg", quality=90)
    jpegs = sorted(photos.glob("*.jpg"))
    cam = gradcam.GradCAM(model, layer=LAYER)
    probe = cam.probe(scaled("NCHW")(images[:batch_size]), None)
    ex = cam.explain_probe(probe)
    math_after_model = per_image(cam.explain_probe, [probe]) / batch_size
    written = {"record": 0, "pictures": 0}

    def encode_pictures(i: int) -> None:
        for picture in (ref.colormap(ex.maps[i]), ref.overlay(images[i : i + 1], ex.maps[i : i + 1])[0]):
            buffer = io.BytesIO()
            Image.fromarray(picture).save(buffer, format="PNG")
            written["pictures"] += len(buffer.getvalue())

    def record_line(i: int) -> None:
        box = ref.bounding_box(ex.maps[i], 0.15)
        ranking = ex.top_channels(5)
        record = {
            "path": str(paths[i]), "target": int(ex.targets[i]), "score": float(ex.scores[i]),
            "boxes": {"gradcam": list(box)},
            "top_channels": {"most": ranking.most[i].tolist(), "least": ranking.least[i].tolist()},
        }
        written["record"] += len(json.dumps(record)) + 1

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    batches = [scaled("NCHW")(images[i : i + batch_size]) for i in range(0, 2 * batch_size, batch_size)]
    whole = per_image(cam, batches) / batch_size
    torch.set_num_threads(threads)
    def read_photo(path: Path) -> np.ndarray:
        return resize(read_image(path), (SIZE, SIZE))

    costs = {
        "Grad-CAM, whole, on one thread": whole,
        "Grad-CAM math after the model (NumPy: weights, map, upsampling to 224x224)": math_after_model,
        "read + decode a 224x224 PNG (these images)": per_image(read_image, paths),
        "read + decode + resize a 500x375 JPEG (photo-sized)": per_image(read_photo, jpegs),
        "encode the heat map and overlay PNGs": per_image(encode_pictures, range(batch_size)),
        "15% box + JSON record": per_image(record_line, range(batch_size)),
    }
    shard = io.BytesIO()
    np.savez_compressed(shard, gradcam=np.round(ex.maps * 255).astype(np.uint8))
    sizes = {
        "224x224 PNG input (these images)": np.mean([p.stat().st_size for p in paths]),
        "500x375 JPEG input (quality 90)": np.mean([p.stat().st_size for p in jpegs]),
        "record (one JSON line, Grad-CAM)": written["record"] / batch_size,
        "heat map + overlay PNGs": written["pictures"] / batch_size,
        "heat map in an .npz shard (uint8, compressed)": len(shard.getvalue()) / batch_size,
    }
    return costs, sizes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument(
        "--rounds", type=int, default=2,
        help="each round runs every variant once, in a rotated order; the table gives the median round "
        "(0: stage costs only)",
    )
    parser.add_argument(
        "--actors", type=int, nargs="*", default=[1, 2], help="Ray runs to make (default: 1 and 2 actors)"
    )
    parser.add_argument("--skip-ray", action="store_true")
    parser.add_argument(
        "--device", default="cpu", help="PyTorch device of the bare loop and the local engine (default cpu)"
    )
    parser.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per Ray actor (default 0)")
    args = parser.parse_args()

    model = resnet50().to(args.device)
    loaded = LoadedModel(model, "torch", "resnet50", (SIZE, SIZE), scaled("NCHW"))
    with tempfile.TemporaryDirectory() as tmp:
        folder, out = Path(tmp) / "images", Path(tmp) / "out"
        images = write_images(folder, args.images)
        print(f"{args.images} images {SIZE}x{SIZE}, batch {args.batch_size}, torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, median of {args.rounds} rounds", flush=True)
        cam = gradcam.GradCAM(model, layer=LAYER)
        cam(scaled("NCHW")(images[: args.batch_size]))  # warm-up, as the engines' check on a blank image
        local = functools.partial(engine_run, loaded, folder, out, args.batch_size)
        variants: dict[str, tuple[Callable[[], None], Callable[[], contextlib.AbstractContextManager]]] = {
            BARE: (functools.partial(bare_loop, cam, images, args.batch_size), contextlib.nullcontext),
            "local engine, records only": (functools.partial(local, False, EngineOptions()), contextlib.nullcontext),
            "local engine, records + PNG maps": (
                functools.partial(local, True, EngineOptions()), contextlib.nullcontext
            ),
        }
        for actors in [] if args.skip_ray else args.actors:
            engine = EngineOptions("ray", actors=actors, num_gpus=args.num_gpus)
            run = functools.partial(engine_run, loaded, folder, out, args.batch_size, False, engine)
            variants[f"ray engine, {actors} actor{'s' if actors > 1 else ''}"] = (run, ray_instance)
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
        names = list(variants)
        for round_ in range(args.rounds):
            for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                wall, cpu = measure(*variants[name])
                rounds[name].append((wall, cpu))
                print(f"round {round_ + 1}: {name}: {wall:.1f} s, {cpu:.1f} CPU s", flush=True)
        costs, sizes = stage_costs(model, folder, images, args.batch_size)

    if args.rounds:
        median = {name: tuple(np.median(np.array(times), axis=0)) for name, times in rounds.items()}
        (bare_wall, bare_cpu), n = median[BARE], args.images
        print("\n| variant | seconds | images/s | x bare loop | CPU ms per image | x bare loop, by CPU time |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in names:
            wall, cpu = median[name]
            print(
                f"| {name} | {wall:.1f} | {n / wall:.1f} | {bare_wall / wall:.2f} | {1000 * cpu / n:.0f} "
                f"| {bare_cpu / cpu:.2f} |"
            )
    print("\n| stage | CPU ms per image |\n|---|---:|")
    for name, seconds in costs.items():
        print(f"| {name} | {1000 * seconds:.2f} |")
    print("\n| data | bytes per image |\n|---|---:|")
    for name, size in sizes.items():
        print(f"| {name} | {size:,.0f} |")


if __name__ == "__main__":
    main()
