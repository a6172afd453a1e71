"""``gradcam compare``: every requested method on every image (and model) in one figure."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.batch.errors import JobError
from gradcam.batch.job import build_methods, method_names, non_finite_parts, png_bytes, run_methods
from gradcam.batch.loading import LoadedModel
from gradcam.batch.records import written_whole
from gradcam.batch.sources import not_a_file
from gradcam.cli.figure import comparison_figure
from gradcam.images import ImageReadError, read_image, resize


def run_compare(
    models: list[LoadedModel],
    paths: list[Path],
    output: Path,
    method_list: list[str],
    layer: str | None,
    class_id: int | None,
    image_size: tuple[int, int] | None,
    cell: int,
    options: dict[str, Any],
) -> int:
    """Write the comparison figure; returns the exit status (1 when some image could not be read).

    The figure never replaces an input (compared by real paths, so also not through a link), and it is
    written whole under a temporary name and renamed into place.
    """
    check_output(output, paths)
    originals, names, failed = [], [], 0
    for path in paths:
        try:
            problem = not_a_file(str(path))  # never open a FIFO or a device: the read would not return
            if problem is not None:
                raise ImageReadError(problem)
            originals.append(read_image(path, options.get("max_pixels")))
            names.append(path.stem)
        except ImageReadError as error:
            print(f"gradcam: error: {error}", file=sys.stderr)
            failed += 1
    if not originals:
        raise JobError("no readable image to compare")
    columns: list[str] = []
    rows = []
    for loaded in models:
        methods = build_methods(method_names(method_list, loaded), loaded, layer, options)
        columns = ["input", *methods]
        size = image_size or loaded.image_size
        inputs = np.stack([resize(o, size) for o in originals])
        x = loaded.prepare(inputs)
        results = run_methods(methods, x, class_id, "the images")
        first = next(iter(results.values()))
        for i, (stem, parts) in enumerate(zip(names, non_finite_parts(results), strict=True)):
            if parts:
                # a NaN map would draw as a confident picture; the row says what went wrong instead
                raise JobError(f"{stem}: the model's output is not finite (NaN or infinity in {', '.join(parts)})")
            target = int(first.targets[i])
            label = loaded.class_names[target] if loaded.class_names and target >= 0 else str(target)
            pictures = [inputs[i]]
            for ex in results.values():
                if ex.pixel_space:
                    pictures.append(ex.image()[i])
                else:
                    pictures.append(ref.overlay(inputs[i : i + 1], ex.maps[i : i + 1])[0])
            model_part = f"{loaded.name}: " if len(models) > 1 else ""
            rows.append((f"{model_part}{stem} -> {label} ({float(first.scores[i]):.2f})", pictures))
    figure = png_bytes(comparison_figure(rows, columns, cell=cell))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with written_whole(output) as file:
            file.write(figure)
    except OSError as error:
        raise JobError(f"--output {output} cannot be written ({error.strerror})") from None
    print(f"gradcam: wrote the comparison of {len(columns) - 1} methods on {len(rows)} rows to {output}")
    return 1 if failed else 0


def check_output(output: Path, paths: list[Path]) -> None:
    """Refuse (``JobError``) an ``--output`` that is one of the input images or a folder."""
    real = os.path.realpath(output)
    for path in paths:
        if os.path.realpath(path) == real:
            raise JobError(f"--output {output} is the input image {path}: it would be overwritten; choose another file")
    if os.path.isdir(output):
        raise JobError(f"--output {output} is a folder; give the file name of the figure")
