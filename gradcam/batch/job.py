"""The job of ``gradcam explain``, the same whatever engine runs it: a decoded batch in, its output out.

``ExplainJob`` says what to do with each batch and is picklable, so that a worker process can rebuild the
``Explainer`` from it; the ``Explainer`` turns a ``DecodedBatch`` (``gradcam.batch.reader``) into a
``BatchOutput`` (``gradcam.batch.records``): one record per image, its pictures as PNG bytes, its heat maps.
The pictures are named by ``OutputLayout`` (``gradcam.batch.layout``).
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from PIL import Image

from gradcam import reference as ref
from gradcam.api import method_class
from gradcam.batch.errors import JobError
from gradcam.batch.layout import OutputLayout, PictureKey, Record
from gradcam.batch.loading import LoadedModel, ModelSpec
from gradcam.batch.reader import ORIGINAL_MAX_SIDE, DecodedBatch, decode_batch
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

    The methods are quiet: their warnings go to the records (``Record``), not to the terminal once per batch.
    """
    methods = {}
    for name in names:
        cls = method_class(name)
        kwargs: dict[str, Any] = {"quiet": True}
        if cls.takes_layer:
            kwargs["layer"] = layer or loaded.layer
        if name == "cam":
            if loaded.fc_layer is None and not options.get("fc_layer"):
                raise JobError("--method cam needs --fc-layer (the dense layer after global average pooling)")
            kwargs["fc_layer"] = options.get("fc_layer") or loaded.fc_layer
        if name == "smoothgradcam++":
            kwargs.update(n_samples=options["n_samples"], noise_level=options["noise_level"])
        try:
            methods[name] = cls(loaded.model, **kwargs)
        except (ValueError, KeyError, TypeError) as error:  # the method's own check of its options
            raise JobError(f"--method {name}: {one_line(error)}") from None
    return methods


def one_line(error: BaseException) -> str:
    """An exception's message on one line (a ``KeyError``'s without the quotes its ``str`` adds)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else error
    return " ".join(str(text).split())


def run_methods(methods: dict[str, Method], x: Any, target: Any, what: str) -> dict[str, Explanation]:
    """Every method on the model's input ``x`` (``what`` it is, for the message); any failure is a ``JobError``.

    A ``ValueError`` or ``KeyError`` is one of gradcam's own checks (layer, class, option) and keeps its message;
    anything else is the model or a backend failing on this input or layer (an input too small for the model,
    a layer that never runs or that the output does not depend on), named with its type.
    """
    try:
        return {name: method(x, target=target) for name, method in methods.items()}
    except (ValueError, KeyError) as error:
        raise JobError(one_line(error)) from None
    except Exception as error:  # noqa: BLE001 - the model's own code may raise anything; the user must see one line
        raise JobError(f"explaining {what} failed: {type(error).__name__}: {one_line(error)}") from None


def non_finite_parts(explanations: dict[str, Explanation]) -> list[list[str]]:
    """Per image of a batch, the parts of the methods' results that hold NaN or an infinity (score, logits,
    maps, raw maps, channel weights); an empty list for an image whose numbers are all finite."""
    n = len(next(iter(explanations.values())).scores)
    parts: list[list[str]] = [[] for _ in range(n)]
    for name, ex in explanations.items():
        named = [("score", ex.scores), ("logits", ex.logits), (f"{name} map", ex.maps)]
        named += [(f"{name} map", raw) for raw in ex.raw_by_layer.values()]
        named += [(f"{name} channel weights", weights) for weights in ex.weights_by_layer.values()]
        for part, array in named:
            if array is not None:
                for row in np.flatnonzero(~np.isfinite(np.asarray(array).reshape(n, -1)).all(axis=1)):
                    if part not in parts[row]:
                        parts[row].append(part)
    return parts


def rows_of(ex: Explanation, rows: np.ndarray) -> Explanation:
    """The explanation of only ``rows`` of its batch."""
    return replace(
        ex, maps=ex.maps[rows], targets=ex.targets[rows], scores=ex.scores[rows],
        raw_by_layer={k: v[rows] for k, v in ex.raw_by_layer.items()},
        weights_by_layer={k: v[rows] for k, v in ex.weights_by_layer.items()},
        logits=None if ex.logits is None else ex.logits[rows],
        warnings=tuple(w for w in (w.of_rows(list(rows)) for w in ex.warnings) if w is not None),
    )


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
    original_side : overlays are drawn at the image's own size, reduced to this long side when larger (None:
        never reduced; the default keeps the memory of a batch of large images small).
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
    original_side: int | None = ORIGINAL_MAX_SIDE

    def decode(self, items: list[InputItem]) -> DecodedBatch:
        """Read a batch of inputs (originals are kept only when overlays are drawn at their size)."""
        return decode_batch(items, self.image_size, self.max_pixels, self.pictures, self.original_side)

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

    On creation it explains one blank image, so that a bad layer (unknown, never run, or one the output does
    not depend on), class, method option or an input size the model cannot take is reported as a ``JobError``
    before any input is read, and the number of classes is known to check per-image targets.
    """

    def __init__(self, loaded: LoadedModel, job: ExplainJob) -> None:
        self.loaded = loaded
        self.job = job
        self.methods = build_methods(list(job.methods), loaded, job.layer, job.method_options)
        height, width = job.image_size
        blank = loaded.prepare(np.zeros((1, height, width, 3), np.uint8))
        explained = run_methods(self.methods, blank, job.class_id, f"a blank {height}x{width} image")
        logits = next((ex.logits for ex in explained.values() if ex.logits is not None), None)
        self.classes: int | None = None if logits is None else int(logits.shape[1])
        self.kinds = {name: OutputLayout.kinds(ex.pixel_space) for name, ex in explained.items()}

    def explain(self, batch: DecodedBatch) -> BatchOutput:
        """Every method on every readable image of ``batch``; an error record for each other one."""
        return self.finish(self.run(batch))

    def run(self, batch: DecodedBatch) -> Explained:
        """The model's part of ``explain``: the methods on the readable images.

        An image the model gives a non-finite score, logit or map, or one the methods fail on, gets an error
        (the other images of its batch are explained all the same).
        """
        errors = [error or self._target_error(item) for item, error in zip(batch.items, batch.errors, strict=True)]
        # Images with their own target (from a manifest) and the others go through the methods separately.
        own = [i for i, item in enumerate(batch.items) if errors[i] is None and item.target is not None]
        default = [i for i, item in enumerate(batch.items) if errors[i] is None and item.target is None]
        groups = []
        for indices, target in ((own, [batch.items[i].target for i in own]), (default, self.job.class_id)):
            if indices:
                groups += self._explain_rows(batch, indices, target, errors)
        return Explained(batch, errors, groups)

    def _explain_rows(
        self, batch: DecodedBatch, indices: list[int], target: Any, errors: list[str | None]
    ) -> list[tuple[list[int], dict[str, Explanation]]]:
        """The methods on the images ``indices`` of ``batch`` (``target``: one for all, or a list, one each);
        the groups of images explained, with an error in ``errors`` for each other one."""
        rows = batch.pixels if len(indices) == len(batch.pixels) else batch.pixels[indices]
        x = self.loaded.prepare(rows)
        try:
            explanations = {name: method(x, target=target) for name, method in self.methods.items()}
        except Exception as error:  # noqa: BLE001 - the model's own code may raise anything for one image
            if len(indices) == 1:
                reason = f"{type(error).__name__}: {one_line(error)}"
                errors[indices[0]] = f"{batch.items[indices[0]].path}: the methods failed on this image ({reason})"
                return []
            # The settings passed the check on a blank image, so an image is to blame: each goes alone.
            return [
                group
                for k, i in enumerate(indices)
                for group in self._explain_rows(batch, [i], [target[k]] if isinstance(target, list) else target, errors)
            ]
        not_finite = non_finite_parts(explanations)
        for row, parts in enumerate(not_finite):
            if parts:
                errors[indices[row]] = (
                    f"{batch.items[indices[row]].path}: the model's output for this image is not finite (NaN or "
                    f"infinity in its {', '.join(parts)}); check the model's weights and the input's scale"
                )
        keep = [row for row, parts in enumerate(not_finite) if not parts]
        if len(keep) < len(indices):
            explanations = {name: rows_of(ex, np.array(keep, int)) for name, ex in explanations.items()}
        return [([indices[row] for row in keep], explanations)] if keep else []

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
            warnings=results.warnings_of(row),
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
        self.warnings = [warning for ex in results.values() for warning in ex.warnings]

    def warnings_of(self, row: int) -> list[str]:
        """The methods' warnings about image ``row``, each once (a probability explained is every method's)."""
        return list(dict.fromkeys(warning.reason for warning in self.warnings if warning.concerns(row)))

    def pictures(self, name: str, row: int, original: np.ndarray) -> dict[str, bytes]:
        """Kind -> PNG bytes: heat map, overlay (at the size of ``original``: the image's own size, its long side
        cut to ``ExplainJob.original_side``) and, for pixel-space methods, the guided picture, in the order of
        ``OutputLayout.kinds``."""
        heat = self.heat[name][row]
        at_original = np.clip(ref.upsample(heat[None], original.shape[:2])[0], 0.0, 1.0)
        pictures = [ref.colormap(heat), ref.overlay(original[None], at_original[None])[0]]
        if name in self.guided:
            pictures.append(self.guided[name][row])
        kinds = OutputLayout.kinds(name in self.guided)
        return {kind: png_bytes(picture) for kind, picture in zip(kinds, pictures, strict=True)}
