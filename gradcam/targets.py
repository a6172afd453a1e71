"""What a method explains: the target vocabulary every method and metric takes, and the ready targets.

A target is ``None`` (the top-1 class of each image), an int (one class for all), one int per image, a callable
``f(outputs) -> (N,)`` scores, or several per image in one call: an ``(N, T)`` integer array or a list of ``T``
callables (``Explanation.maps`` then has shape ``(N, T, *grid)``).

The ready targets (``ClassScore``, ``SegmentationRegion``, ``BoxScore``, ``EmbeddingSimilarity``) are small
classes whose ``__call__`` uses operator arithmetic and basic indexing, which torch tensors, TensorFlow tensors,
JAX arrays and NumPy arrays all support; the one reduction (a sum), the stacking of per-image scores and the
conversion of constants (a mask, a reference embedding) go through a helper that dispatches on the module of the
output's type. Why so, and not one callable per framework: the gradient methods call a target with the
framework's own output inside its gradient computation (a torch tensor in the autograd graph, a TensorFlow
tensor in a traced function, a JAX tracer under ``jax.grad``), while the forward-only methods (Score-CAM,
Ablation-CAM, occlusion) and the metrics call it with the NumPy outputs of ``backend.predict``; one object serves
all of them, and this module imports no framework (the framework of a tensor is already imported when the tensor
exists).

A target of per-image parts (a class, a mask or boxes per image) must know which image a row of a batch is a copy
of: the forward-only methods score rows that mix copies of several images. ``ScoreTarget.for_images`` gives the
target for such a batch. A plain callable gets, there, NumPy arrays of as many rows as the explained batch, row
``n`` a copy of image ``n`` (``copy_scores``), so a callable written for the batch (a mask or a class per image)
scores every copy with its own image's part.

``Neuron`` is the one target not of the model's outputs: a unit of an internal layer, which the gradient methods'
backends capture in the same forward and score (``Neuron.layer_score``); the forward-only methods and the
metrics, which see only outputs, refuse it.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from gradcam.backends.common import target_function_shape_error
from gradcam.explanation import Explanation, ExplanationWarning
from gradcam.reference.scores import target_scores


def _framework(array: Any) -> str:
    """``"torch"``, ``"tensorflow"``, ``"jax"`` or ``"numpy"``: the library an output array belongs to."""
    root = type(array).__module__.split(".")[0]
    if root in ("jax", "jaxlib"):
        return "jax"
    if root in ("tensorflow", "keras"):
        return "tensorflow"
    return "torch" if root == "torch" else "numpy"


def _constant(value: Any, like: Any) -> Any:
    """``value`` as an array of ``like``'s framework, dtype (and device, for torch)."""
    value = np.asarray(value)
    kind = _framework(like)
    if kind == "torch":
        return importlib.import_module("torch").as_tensor(value, dtype=like.dtype, device=like.device)
    if kind == "tensorflow":
        return importlib.import_module("tensorflow").constant(value, dtype=like.dtype)
    if kind == "jax":
        return importlib.import_module("jax.numpy").asarray(value, dtype=like.dtype)
    return value.astype(np.asarray(like).dtype)


def _sum(array: Any, axes: tuple[int, ...]) -> Any:
    """``array`` summed over ``axes``, in its own framework (in the gradient's graph where there is one)."""
    kind = _framework(array)
    if kind == "torch":
        return array.sum(dim=axes)
    if kind == "tensorflow":
        return importlib.import_module("tensorflow").reduce_sum(array, axis=list(axes))
    if kind == "jax":
        return importlib.import_module("jax.numpy").sum(array, axis=axes)
    return np.sum(array, axis=axes)


def _stack(arrays: list[Any]) -> Any:
    """0-d arrays of one framework stacked into an ``(N,)`` array of it."""
    kind = _framework(arrays[0])
    if kind == "torch":
        return importlib.import_module("torch").stack(arrays)
    if kind == "tensorflow":
        return importlib.import_module("tensorflow").stack(arrays)
    if kind == "jax":
        return importlib.import_module("jax.numpy").stack(arrays)
    return np.stack(arrays)


def _values(array: Any) -> np.ndarray:
    """The concrete values of an array (outside any gradient graph), for decisions such as box matching."""
    if _framework(array) == "torch":
        array = array.detach().cpu()
    elif _framework(array) == "tensorflow":
        array = array.numpy()
    return np.asarray(array)


class ScoreTarget(ABC):
    """A target that maps the model's outputs to one score per image, in any framework or NumPy."""

    @abstractmethod
    def __call__(self, outputs: Any) -> Any:
        """``(N,)`` scores of the outputs of a batch of ``N`` images, an array of the outputs' framework."""

    def for_images(self, images: np.ndarray) -> ScoreTarget:
        """The target for a batch whose row ``m`` is (a copy of) image ``images[m]``; a target with nothing
        per image is the same for every row."""
        return self


class ClassScore(ScoreTarget):
    """The raw score of class ``c``: ``s_n = y_{n, c_n}`` of an ``(N, classes)`` output.

    ``classes``: one int for every image, or one per image.
    """

    def __init__(self, classes: int | Sequence[int] | np.ndarray) -> None:
        self.classes = np.asarray(classes)
        if self.classes.dtype.kind not in "iu" or self.classes.ndim > 1:
            raise ValueError(f"ClassScore takes one int or one int per image, got {classes!r}")
        self.classes = self.classes.astype(np.int64)

    def __call__(self, outputs: Any) -> Any:
        if len(outputs.shape) != 2:
            raise ValueError(f"ClassScore needs an (N, classes) output, got shape {tuple(outputs.shape)}")
        n_classes = int(outputs.shape[1])
        bad = (self.classes < 0) | (self.classes >= n_classes)
        if bad.any():
            raise ValueError(f"class index {int(self.classes[bad][0])} is out of range: valid classes are "
                             f"0..{n_classes - 1}")
        if self.classes.ndim == 0:
            return outputs[:, int(self.classes)]
        _check_rows(self.classes, outputs, "classes")
        one_hot = np.eye(n_classes)[self.classes]
        return _sum(outputs * _constant(one_hot, outputs), (1,))

    def for_images(self, images: np.ndarray) -> ClassScore:
        return self if self.classes.ndim == 0 else ClassScore(self.classes[images])


class SegmentationRegion(ScoreTarget):
    """A segmentation model's score of class ``c`` over a region: ``s_n = sum_p mask_p * y_{n, c, p}`` over the
    grid positions ``p`` of an ``(N, C, *grid)`` output (pytorch-grad-cam's ``SemanticSegmentationTarget``).

    ``mask``: ``(*grid)`` for every image or ``(N, *grid)`` one per image, 0/1 or weights; ``grid``: the number
    of grid axes (2 for images ``(H, W)``, 1 for signals, 3 for volumes), which tells the two apart.
    ``channel_axis``: 1 (default, ``(N, C, *grid)``) or -1 for channels-last outputs ``(N, *grid, C)`` (Keras).
    """

    def __init__(self, category: int, mask: Any, channel_axis: int = 1, grid: int = 2) -> None:
        if channel_axis not in (1, -1):
            raise ValueError(f"channel_axis must be 1 or -1, got {channel_axis!r}")
        self.category, self.channel_axis, self.grid = int(category), channel_axis, int(grid)
        self.mask = np.asarray(mask, dtype=np.float64)
        if self.mask.ndim not in (self.grid, self.grid + 1):
            raise ValueError(
                f"mask must have {self.grid} grid axes, or one more for one mask per image; got shape {self.mask.shape}"
            )

    @property
    def per_image(self) -> bool:
        return self.mask.ndim == self.grid + 1

    def __call__(self, outputs: Any) -> Any:
        class_map = outputs[:, self.category] if self.channel_axis == 1 else outputs[..., self.category]
        grid = tuple(int(s) for s in class_map.shape[1:])
        mask_grid = self.mask.shape[1:] if self.per_image else self.mask.shape
        if mask_grid != grid:
            raise ValueError(f"a mask of grid {mask_grid} does not fit the class map's grid {grid}")
        if self.per_image:
            _check_rows(self.mask, outputs, "masks")
        mask = self.mask if self.per_image else self.mask[None]
        return _sum(class_map * _constant(mask, class_map), tuple(range(1, len(grid) + 1)))

    def for_images(self, images: np.ndarray) -> SegmentationRegion:
        if not self.per_image:
            return self
        return SegmentationRegion(self.category, self.mask[images], self.channel_axis, self.grid)


class BoxScore(ScoreTarget):
    """A detector's score for wanted boxes: ``s_n = sum_b score_{n, j(b)}`` over the wanted boxes ``b`` of image
    ``n``, ``j(b)`` the detection with ``b``'s label and the largest IoU with ``b``, if that IoU is at least
    ``iou_threshold``; a box without such a detection adds 0.

    The outputs are those of torchvision's detectors: a sequence of one mapping per image with ``"boxes"``
    ``(k, 4)`` as ``(x0, y0, x1, y1)``, ``"labels"`` ``(k,)`` and ``"scores"`` ``(k,)``. The matching is a choice
    made on the values (outside the gradient); the score is the matched detection's, in its framework's graph.
    A detector's outputs are not one array, so this target serves the gradient methods (an eager framework:
    torch), not the forward-only methods, whose ``backend.predict`` returns one array.

    ``boxes``: ``(N, 4)`` (one box per image) or one ``(k, 4)`` array per image; ``labels``: ``(N,)`` or one
    ``(k,)`` array per image, matching.
    """

    def __init__(self, boxes: Any, labels: Any, iou_threshold: float = 0.5) -> None:
        self.boxes = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in boxes]
        self.labels = [np.asarray(lab, dtype=np.int64).reshape(-1) for lab in labels]
        if len(self.boxes) != len(self.labels) or any(
            len(b) != len(lab) for b, lab in zip(self.boxes, self.labels, strict=True)
        ):
            raise ValueError("BoxScore needs one label per wanted box, for the same images")
        if not 0 <= iou_threshold <= 1:
            raise ValueError(f"iou_threshold must lie in [0, 1], got {iou_threshold}")
        self.iou_threshold = float(iou_threshold)

    def __call__(self, outputs: Any) -> Any:
        if isinstance(outputs, Mapping) or not isinstance(outputs, Sequence):
            raise ValueError(
                "BoxScore needs a detector's outputs: a list of one dict per image with 'boxes', 'labels' and "
                f"'scores' (torchvision's detectors), got {type(outputs).__name__}"
            )
        _check_rows(self.boxes, outputs, "box lists")
        totals = []
        for detections, wanted, labels in zip(outputs, self.boxes, self.labels, strict=True):
            scores = detections["scores"]
            found, found_labels = _values(detections["boxes"]).reshape(-1, 4), _values(detections["labels"])
            total = _sum(scores[:0], (0,))  # 0 in the scores' graph, for an image with no match
            for box, label in zip(wanted, labels, strict=True):
                iou = np.where(found_labels == label, box_iou(box, found), -1.0)
                if iou.size and iou.max() >= self.iou_threshold:
                    total = total + scores[int(np.argmax(iou))]
            totals.append(total)
        return _stack(totals)

    def for_images(self, images: np.ndarray) -> BoxScore:
        return BoxScore([self.boxes[i] for i in images], [self.labels[i] for i in images], self.iou_threshold)


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """The intersection over union of ``box`` ``(x0, y0, x1, y1)`` with each of ``boxes`` ``(k, 4)``:
    ``|b ∩ d| / (|b| + |d| - |b ∩ d|)``, areas of continuous boxes (0 where the union is empty)."""
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1]) + (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    union = area - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


class EmbeddingSimilarity(ScoreTarget):
    """The cosine similarity of the output embedding with a reference:
    ``s_n = <e_n, r_n> / (sqrt(||e_n||^2 + eps) ||r_n||)`` for an ``(N, D)`` output (pytorch-grad-cam's
    ``SimilarityToConceptTarget``); ``eps = 1e-12`` keeps a zero embedding at score 0 rather than NaN.

    ``reference_embeddings``: ``(D,)`` for every image or ``(N, D)``, none of them zero.
    """

    EPS = 1e-12

    def __init__(self, reference_embeddings: Any) -> None:
        reference = np.asarray(reference_embeddings, dtype=np.float64)
        if reference.ndim not in (1, 2):
            raise ValueError(f"reference_embeddings must be (D,) or (N, D), got shape {reference.shape}")
        norms = np.linalg.norm(reference, axis=-1, keepdims=True)
        if (norms == 0).any():
            raise ValueError("a reference embedding is zero: its cosine similarity is undefined")
        self.unit = reference / norms

    def __call__(self, outputs: Any) -> Any:
        if len(outputs.shape) != 2 or int(outputs.shape[1]) != self.unit.shape[-1]:
            raise ValueError(
                f"EmbeddingSimilarity needs an (N, {self.unit.shape[-1]}) output, got shape {tuple(outputs.shape)}"
            )
        unit = self.unit[None] if self.unit.ndim == 1 else self.unit
        if self.unit.ndim == 2:
            _check_rows(self.unit, outputs, "references")
        dot = _sum(outputs * _constant(unit, outputs), (1,))
        return dot / (_sum(outputs * outputs, (1,)) + self.EPS) ** 0.5

    def for_images(self, images: np.ndarray) -> EmbeddingSimilarity:
        return self if self.unit.ndim == 1 else EmbeddingSimilarity(self.unit[images])


class Neuron(ScoreTarget):
    """The activation of one unit of an internal layer (feature visualisation's neuron objective), for the
    gradient methods: ``s_n = A_{n, k, p}`` at grid position ``p``, or with no position its mean over the grid,
    ``s_n = (1 / Z) sum_p A_{n, k, p}``, of the layer's output ``A`` (``(N, K, *grid)`` channels first; a Keras or
    Flax layer's channels-last output alike); a dense layer's ``(N, K)`` output has only its unit ``k``.

    ``layer``: the layer's name as the backend takes it; ``channel``: ``k``; ``position``: ``p``, one index per
    grid axis in the layer's order (``(row, column)``), or ``None``.

    The backend captures ``layer`` in the same forward and scores its output (``layer_score``); the map of an
    explained layer before it then shows where the input raises that unit. The forward-only methods (Score-CAM,
    Ablation-CAM, occlusion) and the metrics see only the model's outputs, so calling a ``Neuron`` on outputs is an
    error.
    """

    def __init__(self, layer: Any, channel: int, position: Sequence[int] | None = None) -> None:
        if isinstance(channel, bool) or int(channel) != channel or channel < 0:
            raise ValueError(f"channel must be a non-negative integer, got {channel!r}")
        if position is not None and (
            len(position) == 0 or any(isinstance(i, bool) or int(i) != i or i < 0 for i in position)
        ):
            raise ValueError(f"position must be None or one non-negative integer per grid axis, got {position!r}")
        self.layer, self.channel = layer, int(channel)
        self.position = None if position is None else tuple(int(i) for i in position)

    def layer_score(self, activation: Any, channel_axis: int) -> Any:
        """``(N,)`` scores from the layer's output ``activation`` (an array of its framework, in the gradient's
        graph), whose channels lie on ``channel_axis`` (1 or -1)."""
        shape = tuple(int(d) for d in activation.shape)
        axis = channel_axis % len(shape)
        if len(shape) < 2 or not self.channel < shape[axis]:
            raise ValueError(
                f"Neuron: layer {self.layer!r} has output shape {shape}, with no channel {self.channel} on axis {axis}"
            )
        unit = activation[(slice(None),) * axis + (self.channel,)]  # (N, *grid)
        grid = shape[1:axis] + shape[axis + 1 :]
        if self.position is None and not grid:
            return unit
        if self.position is None:
            return _sum(unit, tuple(range(1, len(grid) + 1))) / float(np.prod(grid))
        if len(self.position) != len(grid) or any(i >= n for i, n in zip(self.position, grid, strict=True)):
            raise ValueError(f"Neuron: position {self.position} is not in layer {self.layer!r}'s grid {grid}")
        return unit[(slice(None), *self.position)]

    def __call__(self, outputs: Any) -> Any:
        raise ValueError(
            f"a Neuron target scores layer {self.layer!r} inside the model, which only the gradient methods capture "
            "(Grad-CAM, Grad-CAM++, LayerCAM, ... with the torch, Keras or JAX backend); the forward-only methods "
            "(Score-CAM, Ablation-CAM, occlusion) and the metrics see the model's outputs only"
        )

    def __repr__(self) -> str:
        return f"Neuron({self.layer!r}, {self.channel}, position={self.position})"

    # equal neurons are one target: the compiled probes, cached by target, are then reused rather than traced again
    def __eq__(self, other: object) -> bool:
        return isinstance(other, Neuron) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def _key(self) -> tuple[Any, ...]:
        return (self.layer if isinstance(self.layer, str) else id(self.layer), self.channel, self.position)


def _check_rows(per_image: Any, outputs: Any, what: str) -> None:
    """A ``ValueError`` unless ``per_image`` has one entry per row of ``outputs`` (where the batch is known)."""
    rows = len(outputs) if isinstance(outputs, Sequence) else outputs.shape[0]
    if rows is not None and len(per_image) != int(rows):
        raise ValueError(f"got {len(per_image)} {what} for a batch of {int(rows)} images; give one per image")


def copy_scores(
    outputs: np.ndarray, target: Any, classes: np.ndarray, images: np.ndarray, score: str = "raw"
) -> np.ndarray:
    """The score of each row of forward-only outputs (NumPy), row ``m`` a copy of image ``images[m]``, ``(M,)``
    float64.

    A callable target gives its own value, ``f(outputs)_m`` (for a ``ScoreTarget``, the one
    ``for_images(images)`` gives); ``score`` does not apply to it: a softmax over classes needs classes. Class
    targets (``classes``, one per image) give ``softmax(z_m)[c]`` (``"probability"``) or ``z_m[c]`` (``"raw"``),
    ``c = classes[images[m]]``.

    Raises
    ------
    ValueError
        A target function whose result is not one score per row.
    """
    if not callable(target):
        return target_scores(outputs, classes[images], score)
    if isinstance(target, ScoreTarget):
        return _called(target.for_images(images), outputs, len(images))
    return _in_image_rows(target, outputs, np.asarray(images), len(classes))


def _in_image_rows(target: Any, outputs: np.ndarray, images: np.ndarray, n_images: int) -> np.ndarray:
    """A plain callable's scores of rows that mix copies of several images, each row scored where the callable
    expects its image: in rounds, an ``(n_images, ...)`` array whose row ``n`` is one not yet scored copy of image
    ``n`` (a copy of row 0 where image ``n`` has none left) goes through the callable, and row ``n`` of the
    result is that copy's score. So a callable written for the explained batch (a mask per image, a class per
    image) scores each copy with its own image's part; it is called as often as the batch holds copies of one
    image, on NumPy arrays of ``n_images`` rows."""
    values = np.empty(len(images), dtype=np.float64)
    rank = np.zeros(len(images), dtype=np.int64)  # the how-many-th copy of its image each row is
    for n in np.unique(images):
        rows = np.flatnonzero(images == n)
        rank[rows] = np.arange(rows.size)
    for r in range(int(rank.max(initial=-1)) + 1):
        rows = np.flatnonzero(rank == r)
        arranged = np.repeat(outputs[:1], n_images, axis=0)
        arranged[images[rows]] = outputs[rows]
        values[rows] = _called(target, arranged, n_images)[images[rows]]
    return values


def _called(target: Any, outputs: np.ndarray, rows: int) -> np.ndarray:
    try:
        values = target(outputs)
    except (TypeError, AttributeError) as error:
        raise ValueError(
            f"{NUMPY_OUTPUTS}, on which this one failed ({error}); write it in operations NumPy arrays have too "
            "(indexing, arithmetic), or use a ready target of gradcam.targets"
        ) from error
    if np.shape(values) != (rows,):
        raise target_function_shape_error(rows, np.shape(values))
    return np.asarray(values, dtype=np.float64)


def target_columns(target: Any) -> list[Any] | None:
    """The ``T`` single targets of a several-per-image target, or ``None`` for a single target.

    Several per image: an ``(N, T)`` integer array (column ``t``: one class per image) or a list or tuple of
    ``T`` callables.
    """
    if isinstance(target, (list, tuple)) and target and all(callable(t) for t in target):
        return list(target)
    if callable(target) or target is None or isinstance(target, (int, np.integer)):
        return None
    if isinstance(target, (list, tuple)) and any(callable(t) for t in target):
        raise ValueError("a list of targets must be all callables (several targets per image) or all ints")
    classes = np.asarray(target)
    if classes.ndim != 2:
        return None
    if classes.dtype.kind not in "iu":
        raise ValueError(f"class targets must be integers, got {target!r}")
    return [classes[:, t] for t in range(classes.shape[1])]


def stack_columns(explanations: list[Explanation]) -> Explanation:
    """One explanation of ``T`` targets per image from ``T`` single-target explanations of the same batch.

    ``maps`` ``(N, T, *grid)``, ``targets`` and ``scores`` ``(N, T)``, and each layer's raw map and channel
    weights with the same target axis 1 (``(N, T, h, w)``, ``(N, T, K)``); ``logits`` (the same outputs for every
    target), ``layers`` and ``grid`` are the first's; each warning names its target column.
    """
    first = explanations[0]

    def stacked(field: str) -> dict[str, np.ndarray]:
        layers = getattr(first, field)
        return {name: np.stack([getattr(e, field)[name] for e in explanations], axis=1) for name in layers}

    warnings = tuple(
        ExplanationWarning(w.category, f"target column {t}: {w.reason}", w.images)
        for t, e in enumerate(explanations)
        for w in e.warnings
    )
    return Explanation(
        maps=np.stack([e.maps for e in explanations], axis=1),
        targets=np.stack([e.targets for e in explanations], axis=1),
        scores=np.stack([e.scores for e in explanations], axis=1),
        method=first.method,
        layers=list(first.layers),
        raw_by_layer=stacked("raw_by_layer"),
        weights_by_layer=stacked("weights_by_layer"),
        logits=first.logits,
        warnings=warnings,
        grid=first.grid,
    )


NUMPY_OUTPUTS = (
    "the forward-only methods and the metrics call a target function with the model's outputs as one NumPy array"
)


def model_outputs(
    backend: Any, model: Any, batch: np.ndarray, target: Any, batch_size: int | None = None
) -> np.ndarray:
    """``backend.predict`` of ``batch``; for a target function, outputs that are not one array (a detector's
    dicts) are refused with a ``ValueError`` that says why."""
    return array_outputs(lambda: backend.predict(model, batch, batch_size=batch_size), target)


def array_outputs(produce: Callable[[], np.ndarray], target: Any) -> np.ndarray:
    """``produce()``, the outputs of a forward-only pass as one NumPy array; where a backend says (``TypeError``)
    that the model's output is not one array (a detector's dicts), a ``ValueError`` for a target function."""
    try:
        return produce()
    except TypeError as error:
        if not callable(target):
            raise
        raise ValueError(f"{NUMPY_OUTPUTS}, which this model's outputs are not: {error}") from None
