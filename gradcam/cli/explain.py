"""``gradcam explain``: heat maps and records for many images, streamed batch by batch, resumable.

The job in three parts, so that every engine runs the same code on the images:

- the inputs (``gradcam.cli.sources``), listed lazily; images already recorded are skipped (resume);
- ``Explainer``: a decoded batch in, its records, PNG bytes and heat maps out (``BatchOutput``);
- ``OutputSink`` (``gradcam.cli.records``): files first, then the records that name them.

An engine moves batches from the first to the last: ``local`` in this process with a prefetching reader
thread (``gradcam.engines.local``), ``ray`` as a Ray Data pipeline with explainer actors
(``gradcam.engines.ray``). ``ExplainJob`` is everything a worker needs to rebuild the ``Explainer``.
"""
from __future__ import annotations

import io
import os
import sys
import threading
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image
from tqdm import tqdm

from gradcam import reference as ref
from gradcam.api import method_class
from gradcam.cli.loading import CommandError, LoadedModel, load_model
from gradcam.cli.reader import DecodedBatch, decode_batch
from gradcam.cli.records import RECORDS_NAME, BatchOutput, OutputSink, Recorded, read_recorded, remove_outputs, write_summary
from gradcam.cli.sources import InputItem, Sources, count_pending, pending_items
from gradcam.explanation import Explanation
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


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def output_kinds(ex: Explanation) -> tuple[str, ...]:
    return ("heatmap", "overlay", "guided") if ex.pixel_space else ("heatmap", "overlay")


@dataclass(frozen=True)
class ModelSpec:
    """The command line's model arguments, with file paths made absolute, so another process can load the model."""

    model: str | None = None
    weights: str | None = None
    backend: str | None = None
    device: str | None = None

    @classmethod
    def from_arguments(cls, model: str | None, weights: str | None, backend: str | None, device: str | None) -> ModelSpec:
        if model is not None:
            location, _, function = model.rpartition(":")
            if location.endswith(".py"):
                model = f"{os.path.abspath(location)}:{function}"
            elif model.endswith(".keras"):
                model = os.path.abspath(model)
        return cls(model, os.path.abspath(weights) if weights else None, backend, device)

    def load(self) -> LoadedModel:
        return load_model(self.model, self.weights, self.backend, self.device)


@dataclass(frozen=True)
class ExplainJob:
    """What to do with each batch; picklable, so that a worker process can rebuild the ``Explainer``.

    Attributes
    ----------
    model : how to load the model.
    methods : canonical method names.
    layer, class_id : as on the command line (None: the model's default layer, the top-1 class).
    image_size : ``(H, W)`` the model's input size; images are resized to it.
    batch_size : images per batch.
    method_options : ``fc_layer``, ``n_samples``, ``noise_level``.
    max_pixels : refuse larger images (None: Pillow's limit).
    pictures : write PNG heat maps and overlays (and guided pictures).
    shard_maps : return the heat maps as arrays, for ``.npz`` shards.
    """

    model: ModelSpec
    methods: tuple[str, ...]
    layer: str | None
    class_id: int | None
    image_size: tuple[int, int]
    batch_size: int
    method_options: dict[str, Any] = field(default_factory=dict)
    max_pixels: int | None = None
    pictures: bool = True
    shard_maps: bool = False

    def decode(self, items: list[InputItem]) -> DecodedBatch:
        """Read a batch of inputs (originals are kept only when overlays are drawn at their size)."""
        return decode_batch(items, self.image_size, self.max_pixels, keep_originals=self.pictures)

    def output_files(self, output_dir: Path) -> Callable[[str], list[Path]]:
        """stem -> every PNG an image of that stem may get (the guided picture included, which only
        pixel-space methods write)."""
        return lambda stem: [
            output_dir / f"{stem}_{file_slug(name)}_{kind}.png" for name in self.methods for kind in ("heatmap", "overlay", "guided")
        ]

    def explainer(self, loaded: LoadedModel | None = None) -> Explainer:
        """The ``Explainer`` for this job, on ``loaded`` or on the model loaded from ``self.model``."""
        return Explainer(loaded if loaded is not None else self.model.load(), self)


@dataclass
class Explained:
    """A batch after the model: per item, why it was not explained (or None), and per group of images
    (those with their own target, the others) their rows in the batch and the methods' explanations."""

    batch: DecodedBatch
    errors: list[str | None]
    groups: list[tuple[list[int], dict[str, Explanation]]]


class Explainer:
    """Turns decoded batches into records, PNG bytes and heat maps with every method of the job.

    ``explain`` is ``run`` (the methods, on the model) then ``finish`` (records and pictures, NumPy and
    Pillow only), so that an engine can overlap the finishing of one batch with the model on the next.

    On creation it explains one blank image, so that a bad layer, class or method option is reported as a
    ``CommandError`` before any input is read, and the number of classes is known to check per-image targets.
    """

    def __init__(self, loaded: LoadedModel, job: ExplainJob) -> None:
        self.loaded = loaded
        self.job = job
        self.methods = build_methods(list(job.methods), loaded, job.layer, job.method_options)
        blank = self._explain(np.zeros((1, *job.image_size, 3), np.uint8), job.class_id)
        logits = next((ex.logits for ex in blank.values() if ex.logits is not None), None)
        self.classes: int | None = None if logits is None else int(logits.shape[1])
        self.kinds = {name: output_kinds(ex) for name, ex in blank.items()}

    def _explain(self, pixels: np.ndarray, target: Any) -> dict[str, Explanation]:
        x = self.loaded.prepare(pixels)
        try:
            return {name: method(x, target=target) for name, method in self.methods.items()}
        except (ValueError, KeyError) as error:
            raise CommandError(str(error).strip("'\"")) from None

    def explain(self, batch: DecodedBatch) -> BatchOutput:
        """Every method on every readable image of ``batch``; an error record for each other one."""
        return self.finish(self.run(batch))

    def run(self, batch: DecodedBatch) -> Explained:
        """The model's part of ``explain``: the methods on the readable images."""
        errors = [error or self._target_error(item) for item, error in zip(batch.items, batch.errors, strict=True)]
        # Images with their own target (from a manifest) and the others go through the methods separately.
        own = [i for i, item in enumerate(batch.items) if errors[i] is None and item.target is not None]
        default = [i for i, item in enumerate(batch.items) if errors[i] is None and item.target is None]
        groups = [
            (indices, self._explain(batch.pixels[indices], target))
            for indices, target in ((own, [batch.items[i].target for i in own]), (default, self.job.class_id))
            if indices
        ]
        return Explained(batch, errors, groups)

    def finish(self, explained: Explained) -> BatchOutput:
        """The rest of ``explain``, which needs no model: records, PNG bytes and heat maps."""
        batch, n = explained.batch, len(explained.batch.items)
        output = BatchOutput(records=[{"path": item.path, "error": error} for item, error in zip(batch.items, explained.errors, strict=True)])
        if self.job.pictures:
            output.pictures = {f"{name}/{kind}": [b""] * n for name, kinds in self.kinds.items() for kind in kinds}
        if self.job.shard_maps:
            output.maps = {name: np.zeros((n, *self.job.image_size), np.uint8) for name in self.methods}
        for indices, explanations in explained.groups:
            results = BatchResults(explanations)
            for row, i in enumerate(indices):
                original = batch.originals[i] if batch.originals is not None else None
                output.records[i] = self._record(batch.items[i], row, results, original, output, i)
        return output

    def _target_error(self, item: InputItem) -> str | None:
        if item.target is None or self.classes is None or 0 <= item.target < self.classes:
            return None
        return f"{item.path}: class index {item.target} is out of range: valid classes are 0..{self.classes - 1}"

    def _record(
        self, item: InputItem, row: int, results: BatchResults, original: np.ndarray | None, output: BatchOutput, i: int
    ) -> dict[str, Any]:
        """The record of one image (row ``row`` of ``results``); its pictures and maps go into ``output`` at ``i``."""
        target = int(results.targets[row])
        names = self.loaded.class_names
        probabilities = results.probabilities
        record: dict[str, Any] = {
            "path": item.path,
            "target": target,
            "class_name": names[target] if names and 0 <= target < len(names) else None,
            "score": float(results.scores[row]),
            "probability": float(probabilities[row, target]) if probabilities is not None and target >= 0 else None,
            "layer": results.layer,
            "boxes": {name: None if boxes is None else list(boxes[row]) for name, boxes in results.boxes.items()},
        }
        if results.ranking is not None:
            method, ranking = results.ranking
            record["top_channels"] = {"method": method, "most": ranking.most[row].tolist(), "least": ranking.least[row].tolist()}
        if self.job.pictures:
            record["files"] = {}
            for name in results.heat:
                pictures = results.pictures(name, row, original)
                record["files"][name] = {kind: f"{item.name}_{file_slug(name)}_{kind}.png" for kind in pictures}
                for kind, data in pictures.items():
                    output.pictures[f"{name}/{kind}"][i] = data
        if self.job.shard_maps:
            for name, heat in results.heat.items():
                output.maps[name][i] = np.round(heat[row] * 255).astype(np.uint8)
        return record


class BatchResults:
    """The methods' explanations of one batch, with what the records read computed once for the whole batch."""

    def __init__(self, results: dict[str, Explanation]) -> None:
        first = next(iter(results.values()))
        self.targets, self.scores = first.targets, first.scores
        logits = next((ex.logits for ex in results.values() if ex.logits is not None), None)
        self.probabilities = None if logits is None else softmax(logits)
        self.layer = next((ex.layer for ex in results.values() if ex.layer), None)
        self.heat = {name: ex.heatmaps() for name, ex in results.items()}
        self.boxes = {name: None if ex.pixel_space else ex.boxes() for name, ex in results.items()}
        self.guided = {name: ex.image() for name, ex in results.items() if ex.pixel_space}
        weighted = next((ex for ex in results.values() if ex.weights is not None), None)
        self.ranking = None if weighted is None else (weighted.method, weighted.top_channels(5))

    def pictures(self, name: str, row: int, original: np.ndarray) -> dict[str, bytes]:
        """Heat map, overlay (at the original image's size) and, for pixel-space methods, the guided picture."""
        heat = self.heat[name][row]
        at_original = np.clip(ref.upsample(heat[None], original.shape[:2])[0], 0.0, 1.0)
        pictures = {"heatmap": ref.colormap(heat), "overlay": ref.overlay(original[None], at_original[None])[0]}
        if name in self.guided:
            pictures["guided"] = self.guided[name][row]
        return {kind: png_bytes(picture) for kind, picture in pictures.items()}


@dataclass(frozen=True)
class EngineOptions:
    """How batches are run: ``local`` (this process) or ``ray`` (actors of a Ray cluster, local by default)."""

    name: str = "local"
    actors: int = 1
    num_gpus: float = 0.0
    ray_address: str | None = None


class Progress:
    """The progress bar (rate always; total and ETA once known) and the counts of the run."""

    def __init__(self) -> None:
        self.bar = tqdm(unit="img", desc="explain", file=sys.stderr, disable=None, smoothing=0.1)
        self.done = 0
        self.failed = 0
        self.counted: int | None = None
        self._stop_counting = threading.Event()
        self._counter: threading.Thread | None = None

    def count_in_background(self, sources: Sources, recorded: Recorded) -> None:
        """Count the inputs still to do in a thread (a second walk of the folders), for the ETA; only when
        the bar is shown."""
        if self.bar.disable:
            return

        def count() -> None:
            self.counted = count_pending(sources, recorded, self._stop_counting)

        self._counter = threading.Thread(target=count, name="gradcam-count", daemon=True)
        self._counter.start()

    def set_total(self, total: int) -> None:
        if self.bar.total is None:
            self.bar.total = total
            self.bar.refresh()

    def add(self, output: BatchOutput) -> None:
        for record in output.records:
            if "error" in record:
                tqdm.write(f"gradcam: error: {record['error']}", file=sys.stderr)
        self.done += len(output.records)
        self.failed += output.errors
        if self.counted is not None:
            self.set_total(self.counted)
        self.bar.update(len(output.records))

    def close(self) -> None:
        self._stop_counting.set()
        if self._counter is not None:
            self._counter.join()
        self.bar.close()


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
    *,
    manifest: Path | None = None,
    save_maps: bool = True,
    npz_shards: int = 0,
    model_spec: ModelSpec | None = None,
    engine: EngineOptions = EngineOptions(),
) -> int:
    """Explain every input not yet recorded in ``output_dir``; returns the exit status (0, or 1 when some
    image could not be explained).

    ``paths`` are files, folders or glob patterns (see ``Sources``), ``manifest`` a list of more. With
    ``save_maps`` each image gets PNG heat maps and overlays; with ``npz_shards`` > 0 its heat maps also go
    into ``.npz`` shards of that many images. ``model_spec`` (how to load ``loaded`` again) is needed by
    engines that load the model in other processes.
    """
    if batch_size < 1:
        raise CommandError(f"--batch-size must be at least 1, got {batch_size}")
    if npz_shards < 0:
        raise CommandError(f"--npz-shards must be a number of images per shard, got {npz_shards}")
    if engine.actors < 1 or engine.num_gpus < 0:
        raise CommandError(f"--actors must be at least 1 and --num-gpus at least 0, got {engine.actors} and {engine.num_gpus:g}")
    if engine.name == "ray" and model_spec is None:
        raise ValueError("the ray engine loads the model in its workers: pass model_spec")
    if engine.name == "ray" and engine.num_gpus > 0 and loaded.backend == "torch" and not model_spec.device:
        model_spec = replace(model_spec, device="cuda")  # each actor sees only its own GPUs, as cuda:0, ...
    names = method_names(method_list, loaded)
    method_options = {key: options.get(key) for key in ("fc_layer", "n_samples", "noise_level")}
    size = tuple(image_size or loaded.image_size)
    job = ExplainJob(
        model_spec or ModelSpec(), tuple(names), layer, class_id, size, batch_size, method_options,
        options.get("max_pixels"), pictures=save_maps, shard_maps=npz_shards > 0,
    )
    explainer = job.explainer(loaded)
    sources = Sources(paths, manifest)
    output_dir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        remove_outputs(output_dir)
    recorded = read_recorded(output_dir / RECORDS_NAME)
    items = pending_items(sources, recorded, job.output_files(output_dir) if save_maps else None)
    progress = Progress()
    sink = OutputSink(output_dir, npz_shards)

    def emit(output: BatchOutput) -> None:
        sink.write(output)
        progress.add(output)

    try:
        if engine.name == "ray":
            from gradcam.engines.ray import RaySettings, run_ray

            settings = RaySettings(engine.actors, engine.num_gpus, engine.ray_address)
            run_ray(job, items, emit, settings, on_total=progress.set_total)
        else:
            from gradcam.engines.local import run_local

            progress.count_in_background(sources, recorded)
            run_local(job, explainer, items, emit)
    finally:
        sink.close()
        progress.close()
    summary = write_summary(output_dir, {"model": loaded.name, "backend": loaded.backend, "methods": names, "image_size": list(size)})
    print(
        f"gradcam: explained {progress.done - progress.failed} of {progress.done} images with {', '.join(names)}; "
        f"results in {output_dir}/ (summary: {summary})"
    )
    return 1 if progress.failed else 0
