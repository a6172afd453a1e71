"""The job of ``gradcam explain``, the same whatever engine runs it: a decoded batch in, its output out.

``ExplainJob`` says what to do with each batch and is picklable, so that a worker process can rebuild the
``Explainer`` from it; the ``Explainer`` turns a ``DecodedBatch`` (``gradcam.batch.reader``) into a
``BatchOutput`` (``gradcam.batch.records``): one record per image, its pictures as PNG bytes, its heat maps.
The pictures are named by ``OutputLayout`` (``gradcam.batch.layout``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from gradcam import reference as ref
from gradcam.api import method_class
from gradcam.batch.errors import JobError
from gradcam.batch.layout import OutputLayout, PictureKey, Record
from gradcam.batch.loading import LoadedModel, ModelSpec
from gradcam.batch.reader import DecodedBatch, decode_batch
from gradcam.batch.records import BatchOutput
from gradcam.batch.sources import InputItem
from gradcam.explanation import Explanation
from gradcam.methods import METHODS, Method


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
                    raise JobError(str(error)) from None
    return list(dict.fromkeys(names))


def build_methods(
    names: list[str], loaded: LoadedModel, layer: str | None, options: dict[str, Any]
) -> dict[str, Method]:
    """The method objects of ``names`` on ``loaded``'s model, each with the options it takes.

    Parameters
    ----------
    names : canonical method names (``method_names``).
    loaded : the model; its own default layer and dense layer apply where ``layer`` and the options give none.
    layer : the layer to explain (None: the model's default).
    options : ``fc_layer`` (for ``cam``), ``n_samples`` and ``noise_level`` (for ``smoothgradcam++``).
    """
    methods = {}
    for name in names:
        cls = method_class(name)
        kwargs: dict[str, Any] = {}
        if name != "guided-backprop" and name != "deconvnet":
            kwargs["layer"] = layer or loaded.layer
        if name == "cam":
            if loaded.fc_layer is None and not options.get("fc_layer"):
                raise JobError("--method cam needs --fc-layer (the dense layer after global average pooling)")
            kwargs["fc_layer"] = options.get("fc_layer") or loaded.fc_layer
        if name == "smoothgradcam++":
            kwargs.update(n_samples=options["n_samples"], noise_level=options["noise_level"])
        methods[name] = cls(loaded.model, **kwargs)
    return methods


def png_bytes(pixels: np.ndarray) -> bytes:
    """``(H, W)`` or ``(H, W, 3)`` pixels as the bytes of a PNG file."""
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(pixels, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


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
    ``JobError`` before any input is read, and the number of classes is known to check per-image targets.
    """

    def __init__(self, loaded: LoadedModel, job: ExplainJob) -> None:
        self.loaded = loaded
        self.job = job
        self.methods = build_methods(list(job.methods), loaded, job.layer, job.method_options)
        blank = self._explain(np.zeros((1, *job.image_size, 3), np.uint8), job.class_id)
        logits = next((ex.logits for ex in blank.values() if ex.logits is not None), None)
        self.classes: int | None = None if logits is None else int(logits.shape[1])
        self.kinds = {name: OutputLayout.kinds(ex.pixel_space) for name, ex in blank.items()}

    def _explain(self, pixels: np.ndarray, target: Any) -> dict[str, Explanation]:
        x = self.loaded.prepare(pixels)
        try:
            return {name: method(x, target=target) for name, method in self.methods.items()}
        except (ValueError, KeyError) as error:
            raise JobError(str(error).strip("'\"")) from None

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
        errors = zip(batch.items, explained.errors, strict=True)
        output = BatchOutput(records=[Record.error(item.path, error) for item, error in errors])
        if self.job.pictures:
            output.pictures = {
                PictureKey.of(name, kind): [b""] * n for name, kinds in self.kinds.items() for kind in kinds
            }
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
        record = Record.explained(
            path=item.path,
            target=target,
            class_name=names[target] if names and 0 <= target < len(names) else None,
            score=float(results.scores[row]),
            probability=float(probabilities[row, target]) if probabilities is not None and target >= 0 else None,
            layer=results.layer,
            boxes={name: None if boxes is None else list(boxes[row]) for name, boxes in results.boxes.items()},
        )
        if results.ranking is not None:
            method, ranking = results.ranking
            record["top_channels"] = {
                "method": method, "most": ranking.most[row].tolist(), "least": ranking.least[row].tolist()
            }
        if self.job.pictures:
            record["files"] = {}
            for name in results.heat:
                pictures = results.pictures(name, row, original)
                record["files"][name] = {kind: OutputLayout.picture_name(item.name, name, kind) for kind in pictures}
                for kind, data in pictures.items():
                    output.pictures[PictureKey.of(name, kind)][i] = data
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
        self.probabilities = None if logits is None else ref.softmax(logits)
        self.layer = next((ex.layer for ex in results.values() if ex.layer), None)
        self.heat = {name: ex.heatmaps() for name, ex in results.items()}
        self.boxes = {name: None if ex.pixel_space else ex.boxes() for name, ex in results.items()}
        self.guided = {name: ex.image() for name, ex in results.items() if ex.pixel_space}
        weighted = next((ex for ex in results.values() if ex.weights is not None), None)
        self.ranking = None if weighted is None else (weighted.method, weighted.top_channels(5))

    def pictures(self, name: str, row: int, original: np.ndarray) -> dict[str, bytes]:
        """Kind -> PNG bytes: heat map, overlay (at the original image's size) and, for pixel-space methods, the
        guided picture, in the order of ``OutputLayout.kinds``."""
        heat = self.heat[name][row]
        at_original = np.clip(ref.upsample(heat[None], original.shape[:2])[0], 0.0, 1.0)
        pictures = [ref.colormap(heat), ref.overlay(original[None], at_original[None])[0]]
        if name in self.guided:
            pictures.append(self.guided[name][row])
        kinds = OutputLayout.kinds(name in self.guided)
        return {kind: png_bytes(picture) for kind, picture in zip(kinds, pictures, strict=True)}
