"""What Grad-CAM costs in JAX: our methods on a Flax model, beside the jitted forward.

    python benchmarks/bench_jax.py                 # batch 1 and 8, 5 rounds
    python benchmarks/bench_jax.py --rounds 3 --batch-sizes 8 --skip-memory

A ResNet-50-shaped Flax ``linen`` model defined below (bottleneck blocks 3-4-6-3, batch norm with running
averages, random weights drawn with NumPy) at 224x224, NHWC. Every variant explains the top-1 class at
``layer4`` (the last stage, 7x7x2048). Times come from interleaved rounds (each round runs every variant once,
in a rotated order) after one warm-up call each (which compiles); the table gives medians per image. Peak
memory is measured for each variant in a fresh process: the peak resident set size while it runs twice (the
first call compiles), after the variables are built. XLA uses every CPU it finds.

Variants:
  plain jitted forward        ``jax.jit(module.apply)(variables, x)``, NumPy out: the unit of every ratio
  gradcam.*                   our public classes as a user calls them,
                              ``gradcam.GradCAM((module, variables), layer="layer4")(x)`` (NumPy maps out)
  floor: split by hand        the model's own ``features`` and ``head`` methods in one jitted function with
                              ``jax.vjp`` of the head: the cheapest way to the same activations and gradients
"""
from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LAYER = "layer4"
SIZE = 224
Variant = Callable[[np.ndarray], object]


# --- the model -------------------------------------------------------------------------------


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (stride) -> 1x1 (4x wider) convolutions with batch norm, and a projected shortcut."""

    width: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        out = self.width * 4
        h = nn.relu(nn.BatchNorm(use_running_average=True)(nn.Conv(self.width, (1, 1), use_bias=False)(x)))
        h = nn.Conv(self.width, (3, 3), strides=(self.stride, self.stride), padding=1, use_bias=False)(h)
        h = nn.relu(nn.BatchNorm(use_running_average=True)(h))
        h = nn.BatchNorm(use_running_average=True)(nn.Conv(out, (1, 1), use_bias=False)(h))
        if x.shape[-1] != out or self.stride != 1:
            x = nn.Conv(out, (1, 1), strides=(self.stride, self.stride), use_bias=False, name="shortcut")(x)
            x = nn.BatchNorm(use_running_average=True, name="shortcut_bn")(x)
        return nn.relu(h + x)


class Stage(nn.Module):
    width: int
    blocks: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.blocks):
            x = Bottleneck(self.width, self.stride if i == 0 else 1, name=f"block{i}")(x)
        return x


class ResNet50(nn.Module):
    """ResNet-50's shape in Flax; ``features`` ends at ``layer4``, ``head`` pools and classifies."""

    classes: int = 1000
    stages: Sequence[tuple[int, int, int]] = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))

    def setup(self) -> None:
        self.stem = nn.Conv(64, (7, 7), strides=(2, 2), padding=3, use_bias=False)
        self.stem_bn = nn.BatchNorm(use_running_average=True)
        self.layer1, self.layer2, self.layer3, self.layer4 = (Stage(w, b, s) for w, b, s in self.stages)
        self.fc = nn.Dense(self.classes)

    def features(self, x: jax.Array) -> jax.Array:
        x = nn.relu(self.stem_bn(self.stem(x)))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def head(self, a: jax.Array) -> jax.Array:
        return self.fc(jnp.mean(a, axis=(1, 2)))

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.head(self.features(x))


def resnet50() -> tuple[ResNet50, Any]:
    """The module and He-initialised variables drawn with NumPy (JAX's random kernels compile slowly)."""
    module = ResNet50()
    shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, SIZE, SIZE, 3)))
    rng = np.random.default_rng(0)

    def draw(path: tuple[Any, ...], leaf: jax.ShapeDtypeStruct) -> jax.Array:
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(0, (2 / np.prod(leaf.shape[:-1])) ** 0.5, leaf.shape)
        elif name in ("scale", "var"):
            value = np.ones(leaf.shape)
        else:
            value = np.zeros(leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return module, jax.tree_util.tree_map_with_path(draw, shapes)


def images(batch: int) -> np.ndarray:
    return np.random.default_rng(1).uniform(-1, 1, size=(batch, SIZE, SIZE, 3)).astype(np.float32)


# --- the variants ------------------------------------------------------------------------------


def plain_forward(module: ResNet50, variables: Any) -> Variant:
    forward = jax.jit(module.apply)

    def run(x: np.ndarray) -> np.ndarray:
        return np.asarray(forward(variables, x))

    return run


def ours(method: str) -> Callable[[ResNet50, Any], Variant]:
    def build(module: ResNet50, variables: Any) -> Variant:
        import gradcam

        return getattr(gradcam, method)((module, variables), layer=LAYER)

    return build


def floor_split(module: ResNet50, variables: Any) -> Variant:
    """Grad-CAM from the model's own halves: ``A = features(x)``, ``G`` from ``jax.vjp`` of the head."""

    @jax.jit
    def probe(variables: Any, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        A = module.apply(variables, x, method=ResNet50.features)

        def score(a: jax.Array) -> jax.Array:
            logits = module.apply(variables, a, method=ResNet50.head)
            return jnp.sum(jnp.take_along_axis(logits, jnp.argmax(logits, axis=1)[:, None], axis=1))

        _, backward = jax.vjp(score, A)
        (G,) = backward(jnp.ones(()))
        return A, G

    def run(x: np.ndarray) -> np.ndarray:
        A, G = (np.asarray(t) for t in probe(variables, x))
        cam = np.maximum(np.einsum("nhwk,nk->nhw", A, G.mean(axis=(1, 2))), 0)
        return cam / (cam.max(axis=(1, 2), keepdims=True) + 1e-12)

    return run


VARIANTS: dict[str, Callable[[ResNet50, Any], Variant]] = {
    "plain jitted forward": plain_forward,
    "gradcam.GradCAM": ours("GradCAM"),
    "gradcam.GradCAMPlusPlus": ours("GradCAMPlusPlus"),
    "gradcam.GuidedGradCAM": ours("GuidedGradCAM"),
    "floor: split by hand": floor_split,
}
TARGETS = {"gradcam.GradCAM": 1.1, "gradcam.GradCAMPlusPlus": 1.1}
BASE = "plain jitted forward"


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


def peak_rss_mib(variant: str, batch: int) -> float | None:
    """Peak resident memory (MiB) of ``variant`` run twice in a fresh process, or None if it failed."""
    command = [sys.executable, __file__, "--peak-memory-of", variant, "--batch-sizes", str(batch)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"  peak memory of {variant!r} at batch {batch} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return float(done.stdout.strip().splitlines()[-1])


def measure_own_peak(variant: str, batch: int) -> float:
    """In the child process: build, reset the peak counter, run the variant twice, read the peak."""
    module, variables = resnet50()
    x = images(batch)
    run = VARIANTS[variant](module, variables)
    reset_peak()
    run(x)
    run(x)
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
    parser.add_argument("--skip-memory", action="store_true", help="time only (no subprocess per variant)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--peak-memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.peak_memory_of:
        print(f"{measure_own_peak(args.peak_memory_of, args.batch_sizes[0]):.1f}")
        return

    module, variables = resnet50()
    names = [BASE] + [name for name in args.variants if name != BASE]
    runnable = {name: VARIANTS[name](module, variables) for name in names}
    print(
        f"jax {jax.__version__}, {os.cpu_count()} CPUs, Flax ResNet-50 shape at {SIZE}x{SIZE}, "
        f"layer {LAYER!r}, {args.rounds} interleaved rounds, medians\n"
    )
    for batch in args.batch_sizes:
        x = images(batch)
        times = time_rounds(runnable, x, args.rounds)
        peaks = {} if args.skip_memory else {name: peak_rss_mib(name, batch) for name in runnable}
        print("\n" + table(batch, times, peaks), flush=True)
        print(f"\nload average (1, 5, 15 min) after batch {batch}: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
