"""``gradcam compare``: every requested method on every image (and model) in one figure."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.batch.errors import JobError
from gradcam.batch.job import build_methods, method_names
from gradcam.batch.loading import LoadedModel
from gradcam.cli.figure import comparison_figure
from gradcam.images import ImageReadError, read_image, resize, write_png


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
    """Write the comparison figure; returns the exit status (1 when some image could not be read)."""
    originals, names, failed = [], [], 0
    for path in paths:
        try:
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
        try:
            results = {name: method(x, target=class_id) for name, method in methods.items()}
        except (ValueError, KeyError) as error:
            raise JobError(str(error).strip("'\"")) from None
        first = next(iter(results.values()))
        for i, stem in enumerate(names):
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
    write_png(output, comparison_figure(rows, columns, cell=cell))
    print(f"gradcam: wrote the comparison of {len(columns) - 1} methods on {len(rows)} rows to {output}")
    return 1 if failed else 0
