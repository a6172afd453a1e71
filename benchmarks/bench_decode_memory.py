"""Peak memory of ``gradcam explain`` on one large image, at default settings and with ``--no-save-maps``.

    python benchmarks/bench_decode_memory.py                       # a one-colour 8000x8000 RGB PNG
    python benchmarks/bench_decode_memory.py --side 9459 --mode RGBA --format png   # at the default pixel limit
    python benchmarks/bench_decode_memory.py --root /path/to/another/checkout     # the same command from there

Each run is a fresh ``python -m gradcam explain IMAGE --output-dir TMP`` process (the embedded default model,
Grad-CAM); its peak resident set size is the kernel's count for that one child (``os.wait4``'s
``ru_maxrss``), so nothing is sampled and nothing is missed. The image is made once in a temporary folder:
one colour, so that a file of a few hundred KB decodes to hundreds of MB (the case the pixel limit admits
and a small file hides). The first row is the floor: a process that only imports the command and torch.

Not a test: memory is measured and printed, never asserted (tests check the decoded sizes instead).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MiB = 1024 * 1024
COLOURS = {"RGB": (200, 30, 30), "RGBA": (200, 30, 30, 255), "L": 120, "I;16": 40000, "F": 0.25}


def peak_rss(command: list[str], root: Path) -> tuple[int, float, int]:
    """Run ``command`` with gradcam from ``root``; its exit status, wall-clock seconds and peak resident set
    size in bytes."""
    # python -m puts the working folder first on sys.path, before PYTHONPATH and the installed package
    env = {**os.environ, "PYTHONPATH": str(root)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen.wait
    if process.returncode != 0:
        sys.stderr.write(process.stderr.read().decode(errors="replace"))
    process.stderr.close()
    # ru_maxrss is in KiB on Linux, in bytes on macOS
    scale = 1 if sys.platform == "darwin" else 1024
    return process.returncode, time.perf_counter() - start, usage.ru_maxrss * scale


def make_image(path: Path, mode: str, side: int) -> None:
    """Save a one-colour image in a process of its own: Linux counts a child's peak from the RSS of the
    process that forked it, so this one must not have held the decoded image."""
    script = (
        "import sys; from PIL import Image; "
        f"Image.new({mode!r}, ({side}, {side}), {COLOURS[mode]!r}).save(sys.argv[1])"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=8000, help="the image is SIDE x SIDE pixels (default 8000)")
    parser.add_argument("--mode", choices=sorted(COLOURS), default="RGB", help="Pillow mode (default RGB)")
    parser.add_argument("--format", choices=("png", "jpg", "tif"), default="png", help="file format (default png)")
    parser.add_argument(
        "--root", type=Path, default=HERE.parent, help="the checkout whose gradcam runs (default: this one)"
    )
    args = parser.parse_args(argv)
    if args.format == "jpg" and args.mode not in ("RGB", "L"):
        parser.error("JPEG holds RGB or L images only")
    root = args.root.resolve()
    with tempfile.TemporaryDirectory() as folder:
        image = Path(folder) / f"one-colour.{args.format}"
        make_image(image, args.mode, args.side)
        print(
            f"{args.side}x{args.side} {args.mode} {args.format.upper()}, {image.stat().st_size / 1e3:.0f} KB, "
            f"gradcam from {root}"
        )
        print(f"{'variant':<26} {'peak RSS':>10} {'seconds':>8}")
        explain = [sys.executable, "-m", "gradcam", "explain", str(image), "--output-dir"]
        variants = (
            ("import torch, gradcam.cli", [sys.executable, "-c", "import torch, gradcam.cli"]),
            ("default settings", [*explain, str(Path(folder) / "default")]),
            ("--no-save-maps", [*explain, str(Path(folder) / "no-maps"), "--no-save-maps"]),
        )
        for name, command in variants:
            status, seconds, peak = peak_rss(command, root)
            failed = "" if status == 0 else f"  (exit status {status})"
            print(f"{name:<26} {peak / MiB:>6.0f} MiB {seconds:>8.1f}{failed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
