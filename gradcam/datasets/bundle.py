"""Writes the sample images bundled with the package: ``python -m gradcam.datasets.bundle``.

One image per class from the held-out one-object split and one with several instances of a class, each
as a PNG named by its class, with labels and boxes in ``samples.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from gradcam.datasets.shapes import CLASSES, make_split
from gradcam.images import write_png

SAMPLES_DIR = Path(__file__).parent / "samples"


def write_samples(folder: Path = SAMPLES_DIR, seed: int = 2024) -> list[Path]:
    """Write the samples into ``folder`` and return their paths."""
    single = make_split("single", n=50, seed=seed, train=False)
    # the first multi-instance image of this seed that shows three instances of one class clearly
    multi_index = 15
    multi = make_split("multi", n=multi_index + 1, seed=seed, train=False)
    annotations, paths = {}, []
    for label, name in enumerate(CLASSES):
        i = int(next(i for i in range(len(single)) if single.labels[i] == label))
        paths.append(write_png(folder / f"{name}_0.png", single.images[i]))
        annotations[paths[-1].name] = {
            "label": label,
            "class": name,
            "boxes": single.boxes[i].tolist(),
            "split": "single",
            "index": i,
            "seed": seed,
        }
    label = int(multi.labels[multi_index])
    paths.append(write_png(folder / f"{CLASSES[label]}_multi.png", multi.images[multi_index]))
    annotations[paths[-1].name] = {
        "label": label, "class": CLASSES[label], "boxes": multi.boxes[multi_index].tolist(),
        "split": "multi", "index": multi_index, "seed": seed,
    }
    (folder / "samples.json").write_text(json.dumps(annotations, indent=2, sort_keys=True) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gradcam.datasets.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=SAMPLES_DIR, help="folder for the PNGs and samples.json")
    args = parser.parse_args(argv)
    for path in write_samples(args.out):
        print(path)


if __name__ == "__main__":
    main()
