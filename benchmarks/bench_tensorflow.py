"""What Grad-CAM costs in Keras: our methods called from eager code, beside plain compiled inference and peers.

    python benchmarks/bench_tensorflow.py                 # batch 1 and 8, 5 rounds, 2 threads
    python benchmarks/bench_tensorflow.py --rounds 3 --batch-sizes 8 --skip-memory

``keras.applications.ResNet50(weights=None)`` (random weights, nothing downloaded) at 224x224, run with
``training=False``. Every variant explains the top-1 class at ``conv5_block3_out``. Times come from
interleaved rounds (each round runs every variant once, in a rotated order), so drift of the machine hits all
variants alike; the table gives medians per image, after one warm-up call each (which traces what needs
tracing). Peak memory is measured for each variant in a fresh process: the peak resident set size while it
runs twice (the first call traces), after the model is built.

Variants:
  plain compiled inference   ``tf.function(model)(x)``, NumPy in and out: the unit of every ratio
  gradcam.*                  our public classes as a user calls them from eager code,
                             ``gradcam.GradCAM(model, layer="conv5_block3_out")(x)`` (NumPy maps out, upsampled)
  recipe: ...                the Grad-CAM of the Keras docs by hand (a two-output model under a GradientTape,
                             channel weights by mean, raw 7x7 maps): eagerly, and inside ``tf.function``
  tf-keras-vis Gradcam       the peer library, where importable (``pip install tf-keras-vis``)
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
from typing import NamedTuple

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYER = "conv5_block3_out"
SIZE = 224
Variant = Callable[[np.ndarray], object]


# --- the variants ------------------------------------------------------------------------------


def plain_inference(model: keras.Model) -> Variant:
    infer = tf.function(lambda x: model(x, training=False))

    def run(x: np.ndarray) -> np.ndarray:
        return infer(tf.constant(x)).numpy()

    return run


def ours(method: str) -> Callable[[keras.Model], Variant]:
    def build(model: keras.Model) -> Variant:
        import gradcam

        return getattr(gradcam, method)(model, layer=LAYER)

    return build


def recipe(compiled: bool) -> Callable[[keras.Model], Variant]:
    """The Keras-docs Grad-CAM for a batch: one model returning (layer output, predictions), a tape."""

    def build(model: keras.Model) -> Variant:
        grad_model = keras.Model(model.inputs[0], [model.get_layer(LAYER).output, model.output])

        def heatmaps(x: tf.Tensor) -> tf.Tensor:
            with tf.GradientTape() as tape:
                A, predictions = grad_model(x, training=False)
                score = tf.gather(predictions, tf.argmax(predictions, axis=1), batch_dims=1)
            G = tape.gradient(score, A)
            weights = tf.reduce_mean(G, axis=(1, 2))
            cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", A, weights))
            return cam / (tf.reduce_max(cam, axis=(1, 2), keepdims=True) + 1e-12)

        fn = tf.function(heatmaps) if compiled else heatmaps

        def run(x: np.ndarray) -> np.ndarray:
            return fn(tf.constant(x)).numpy()

        return run

    return build


def tf_keras_vis_gradcam(model: keras.Model) -> Variant:
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.scores import CategoricalScore

    explainer = Gradcam(model, clone=False)
    infer = tf.function(lambda x: model(x, training=False))
    last: list = [None, None]  # (input, its top-1 classes): found in the warm-up call, outside the timing

    def run(x: np.ndarray) -> np.ndarray:
        if last[0] is not x:
            last[:] = [x, list(infer(tf.constant(x)).numpy().argmax(axis=1))]
        return explainer(CategoricalScore(last[1]), x, penultimate_layer=LAYER)

    return run


# name -> (builder, the pip package it needs, or "" for ours)
VARIANTS: dict[str, tuple[Callable[[keras.Model], Variant], str]] = {
    "plain compiled inference": (plain_inference, ""),
    "gradcam.GradCAM": (ours("GradCAM"), ""),
    "gradcam.GradCAMPlusPlus": (ours("GradCAMPlusPlus"), ""),
    "gradcam.GuidedGradCAM": (ours("GuidedGradCAM"), ""),
    "recipe: Keras docs, eager": (recipe(compiled=False), ""),
    "recipe: Keras docs, tf.function": (recipe(compiled=True), ""),
    "tf-keras-vis Gradcam": (tf_keras_vis_gradcam, "tf-keras-vis"),
}
TARGETS = {"gradcam.GradCAM": 1.1, "gradcam.GradCAMPlusPlus": 1.1}
BASE = "plain compiled inference"


def build_variants(model: keras.Model, names: list[str]) -> tuple[dict[str, Variant], dict[str, str]]:
    """The variants that can run here, and why the others cannot."""
    runnable, missing = {}, {}
    for name in names:
        builder, package = VARIANTS[name]
        try:
            runnable[name] = builder(model)
        except ImportError as error:
            missing[name] = f"`pip install {package}` ({error})" if package else str(error)
    return runnable, missing


def resnet50() -> keras.Model:
    keras.utils.set_random_seed(0)
    return keras.applications.ResNet50(weights=None)


def images(batch: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, size=(batch, SIZE, SIZE, 3)).astype(np.float32)


# --- measuring -----------------------------------------------------------------------------------


class Timing(NamedTuple):
    wall: float  # median seconds per call
    cpu: float  # median CPU seconds per call, all threads of this process


def time_rounds(variants: dict[str, Variant], x: np.ndarray, rounds: int) -> dict[str, Timing]:
    """Median wall and CPU seconds per call of each variant over interleaved rounds (after one warm-up
    call each). CPU time is what the variant costs even when other processes share the cores."""
    names = list(variants)
    for name in names:
        variants[name](x)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            start, start_cpu = time.perf_counter(), time.process_time()
            variants[name](x)
            wall[name].append(time.perf_counter() - start)
            cpu[name].append(time.process_time() - start_cpu)
    return {name: Timing(statistics.median(wall[name]), statistics.median(cpu[name])) for name in names}


def peak_rss_mib(variant: str, batch: int, threads: int) -> float | None:
    """Peak resident memory (MiB) of ``variant`` run twice in a fresh process, or None if it failed."""
    command = [sys.executable, __file__, "--peak-memory-of", variant, "--batch-sizes", str(batch)]
    command += ["--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  peak memory of {variant!r} at batch {batch} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def measure_own_peak(variant: str, batch: int) -> float:
    """In the child process: build, reset the peak counter, run the variant twice, read the peak."""
    model = resnet50()
    x = images(batch)
    runnable, missing = build_variants(model, [variant])
    if missing:
        raise SystemExit(f"{variant}: {missing[variant]}")
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


def set_threads(threads: int) -> None:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


# --- the report -----------------------------------------------------------------------------------


def table(batch: int, times: dict[str, Timing], peaks: dict[str, float | None]) -> str:
    base, base_peak = times[BASE], peaks.get(BASE)
    lines = [
        f"### batch {batch}",
        "",
        "| variant | ms/img | x plain | CPU ms/img | x plain | peak MiB | x plain | target |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, timing in times.items():
        peak = peaks.get(name)
        peak_cells = "| - | - " if peak is None or base_peak is None else f"| {peak:.0f} | {peak / base_peak:.2f} "
        ratio, cpu_ratio = timing.wall / base.wall, timing.cpu / base.cpu
        target = ""
        if name in TARGETS:
            memory_ok = peak is None or base_peak is None or peak / base_peak <= TARGETS[name]
            verdict = "met" if ratio <= TARGETS[name] and memory_ok else "MISSED"
            target = f"<= {TARGETS[name]}x: {verdict}"
        lines.append(
            f"| {name} | {1000 * timing.wall / batch:.1f} | {ratio:.2f} | {1000 * timing.cpu / batch:.1f} "
            f"| {cpu_ratio:.2f} {peak_cells}| {target} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-memory", action="store_true", help="time only (no subprocess per variant)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--peak-memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    set_threads(args.threads)

    if args.peak_memory_of:
        print(f"{measure_own_peak(args.peak_memory_of, args.batch_sizes[0]):.1f}")
        return

    model = resnet50()
    names = [BASE] + [name for name in args.variants if name != BASE]
    runnable, missing = build_variants(model, names)
    print(
        f"tensorflow {tf.__version__}, keras {keras.__version__}, {args.threads} threads, {os.cpu_count()} CPUs, "
        f"ResNet50(weights=None) at {SIZE}x{SIZE}, layer {LAYER!r}, {args.rounds} interleaved rounds, medians\n"
    )
    for name, why in missing.items():
        print(f"missing: {name}: {why}")
    for batch in args.batch_sizes:
        x = images(batch)
        times = time_rounds(runnable, x, args.rounds)
        peaks = {} if args.skip_memory else {name: peak_rss_mib(name, batch, args.threads) for name in runnable}
        print("\n" + table(batch, times, peaks), flush=True)
        print(f"\nload average (1, 5, 15 min) after batch {batch}: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
