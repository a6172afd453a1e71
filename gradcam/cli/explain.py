"""``gradcam explain``: heat maps, overlays and records for many images, batch by batch."""
from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gradcam import reference as ref
from gradcam.api import method_class
from gradcam.cli.loading import CommandError, LoadedModel
from gradcam.cli.records import RECORDS_NAME, SUMMARY_NAME, RecordWriter, read_records, write_summary
from gradcam.explanation import Explanation
from gradcam.images import ImageReadError, read_image, resize, write_png
from gradcam.methods import METHODS, Method


def file_slug(method: str) -> str:
    """A method name as it appears in file names (``gradcam++`` -> ``gradcampp``)."""
    return method.replace("+", "p")


def method_names(requested: list[str], loaded: LoadedModel) -> list[str]:
    """The canonical names of the requested methods; ``all`` is every method the model supports."""
    names: list[str] = []
    for item in requested:
        for name in filter(None, item.split(",")):
            if name == "all":
                names += [m for m in METHODS if m != "cam" or loaded.fc_layer is not None]
            else:
                try:
                    names.append(method_class(name).name)
                except ValueError as error:
                    raise CommandError(str(error)) from None
    return list(dict.fromkeys(names))


def build_methods(names: list[str], loaded: LoadedModel, layer: str | None, options: dict[str, Any]) -> dict[str, Method]:
    methods = {}
    for name in names:
        cls = method_class(name)
        kwargs: dict[str, Any] = {}
        if name != "guided-backprop" and name != "deconvnet":
            kwargs["layer"] = layer or loaded.layer
        if name == "cam":
            if loaded.fc_layer is None and not options.get("fc_layer"):
                raise CommandError("--method cam needs --fc-layer (the dense layer after global average pooling)")
            kwargs["fc_layer"] = options.get("fc_layer") or loaded.fc_layer
        if name == "smoothgradcam++":
            kwargs.update(n_samples=options["n_samples"], noise_level=options["noise_level"])
        methods[name] = cls(loaded.model, **kwargs)
    return methods


@dataclass
class Item:
    """One input image: where it comes from and the stem its output files are named by."""

    path: Path
    stem: str


OUTPUT_KINDS = ("heatmap", "overlay", "guided")


def plan_items(paths: list[Path], output_dir: Path, names: list[str]) -> list[Item]:
    """Inputs with unique output stems; refuses a plan in which an output file would overwrite an input."""
    items, seen = [], {}
    for path in paths:
        count = seen.get(path.stem, 0)
        seen[path.stem] = count + 1
        items.append(Item(path, path.stem if count == 0 else f"{path.stem}-{count + 1}"))
    inputs = {os.path.abspath(p) for p in paths}
    for item in items:
        for name in names:
            for kind in OUTPUT_KINDS:
                output = output_dir / f"{item.stem}_{file_slug(name)}_{kind}.png"
                if os.path.abspath(output) in inputs:
                    raise CommandError(f"the output {output} would overwrite an input image; choose another --output-dir")
    return items


def batches(items: list[Item], size: int) -> Iterator[list[Item]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def save_outputs(output_dir: Path, stem: str, name: str, ex: Explanation, i: int, original: np.ndarray) -> dict[str, str]:
    """Heat map, overlay (at the original image's size) and, for pixel-space methods, the guided picture."""
    heat = ex.heatmaps()[i]
    slug = f"{stem}_{file_slug(name)}"
    at_original = np.clip(ref.upsample(heat[None], original.shape[:2])[0], 0.0, 1.0)
    pictures = {"heatmap": ref.colormap(heat), "overlay": ref.overlay(original[None], at_original[None])[0]}
    if ex.pixel_space:
        pictures["guided"] = ex.image()[i]
    files = {kind: write_png(output_dir / f"{slug}_{kind}.png", picture) for kind, picture in pictures.items()}
    return {kind: path.name for kind, path in files.items()}


def image_record(item: Item, i: int, results: dict[str, Explanation], files: dict[str, dict], loaded: LoadedModel) -> dict[str, Any]:
    first = next(iter(results.values()))
    target = int(first.targets[i])
    record: dict[str, Any] = {
        "path": str(item.path),
        "target": target,
        "class_name": loaded.class_names[target] if loaded.class_names and 0 <= target < len(loaded.class_names) else None,
        "score": float(first.scores[i]),
        "probability": float(softmax(first.logits)[i, target]) if first.logits is not None and target >= 0 else None,
        "layer": next((ex.layer for ex in results.values() if ex.layer), None),
        "boxes": {name: list(ex.boxes()[i]) if not ex.pixel_space else None for name, ex in results.items()},
        "files": files,
    }
    weighted = next((ex for ex in results.values() if ex.weights is not None), None)
    if weighted is not None:
        ranking = weighted.top_channels(5)
        record["top_channels"] = {"method": weighted.method, "most": ranking.most[i].tolist(), "least": ranking.least[i].tolist()}
    return record


def run_explain(
    loaded: LoadedModel,
    paths: list[Path],
    output_dir: Path,
    method_list: list[str],
    layer: str | None,
    class_id: int | None,
    image_size: tuple[int, int] | None,
    batch_size: int,
    options: dict[str, Any],
    overwrite: bool = False,
) -> int:
    """Explain every image; returns the exit status (0, or 1 when some image could not be read)."""
    names = method_names(method_list, loaded)
    methods = build_methods(names, loaded, layer, options)
    items = plan_items(paths, output_dir, names)
    output_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for stale in (RECORDS_NAME, SUMMARY_NAME):
            (output_dir / stale).unlink(missing_ok=True)
    done = {os.path.abspath(r["path"]) for r in read_records(output_dir / RECORDS_NAME)}
    todo = [item for item in items if os.path.abspath(item.path) not in done]
    size = image_size or loaded.image_size
    failed = 0
    writer = RecordWriter(output_dir)
    try:
        with tqdm(total=len(todo), unit="img", desc="explain", file=sys.stderr, disable=None) as progress:
            for batch in batches(todo, batch_size):
                records, good, originals = [], [], []
                for item in batch:
                    try:
                        originals.append(read_image(item.path, options.get("max_pixels")))
                        good.append(item)
                    except ImageReadError as error:
                        print(f"gradcam: error: {error}", file=sys.stderr)
                        records.append({"path": str(item.path), "error": str(error)})
                        failed += 1
                if good:
                    x = loaded.prepare(np.stack([resize(o, size) for o in originals]))
                    try:
                        results = {name: method(x, target=class_id) for name, method in methods.items()}
                    except (ValueError, KeyError) as error:
                        raise CommandError(str(error).strip("'\"")) from None
                    for i, item in enumerate(good):
                        files = {name: save_outputs(output_dir, item.stem, name, ex, i, originals[i]) for name, ex in results.items()}
                        records.append(image_record(item, i, results, files, loaded))
                writer.write(records)
                progress.update(len(batch))
    finally:
        writer.close()
    summary = write_summary(
        output_dir, {"model": loaded.name, "backend": loaded.backend, "methods": names, "image_size": list(size)}
    )
    print(f"gradcam: explained {len(todo) - failed} of {len(todo)} images with {', '.join(names)}; results in {output_dir}/ (summary: {summary})")
    return 1 if failed else 0
