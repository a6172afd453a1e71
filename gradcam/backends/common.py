"""What every backend does the same way, written once (NumPy only, no framework).

Targets are resolved here before any compute; the ReLU rule names, input checks, batching in chunks,
layer-path lookup, the bounded caches and the shared error messages live here too, so that a backend
module holds only what its framework needs (see ``gradcam.backends.contract``).
"""
from __future__ import annotations

import collections
import dataclasses
import difflib
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from gradcam.backends import inputs as multi
from gradcam.backends import layouts
from gradcam.reference.relu_rules import RULES

Target = None | int | Sequence[int] | np.ndarray | Callable[[Any], Any] | Sequence[Callable[[Any], Any]]
"""``None`` (top-1), an int, one int per image, a callable of the outputs, or several per image (an ``(N, T)`` int
array, a list of ``T`` callables), which the methods split into single targets (``gradcam.targets``)."""
Reshape = Callable[[np.ndarray], np.ndarray] | str | layouts.Layout
"""How a layer output becomes ``(N, K, h, w)``: a layout name (``gradcam.backends.layouts``) or a function on the
NumPy array; ``None`` infers the layout from the output's shape."""

TOP1 = -1
"""The class index that stands for "the top-1 class of this image" in a resolved request."""


def requested_classes(target: Target, n: int, n_classes: int | None = None) -> np.ndarray:
    """One class index per image for ``target``, checked before any forward or backward runs.

    ``None`` and a callable give ``TOP1`` for every image (the callable's scores come from the
    outputs). An int applies to all ``n`` images, a sequence gives one per image. With
    ``n_classes`` known (from the model's output shape), indices are checked against it too.

    Raises
    ------
    ValueError
        Non-integer targets, a count other than 1 or ``n``, an index out of ``0..n_classes-1``, or several
        targets per image (``(N, T)``), which the methods split before a probe (``gradcam.targets``).
    """
    if target is None or callable(target):
        return np.full(n, TOP1, dtype=np.int64)
    classes = np.asarray(target)
    if classes.dtype.kind not in "iu":
        raise ValueError(f"class targets must be integers, got {target!r}")
    if classes.ndim == 0:
        classes = np.full(n, int(classes))
    if classes.ndim == 2:
        raise ValueError(
            f"an (N, T) array of several targets per image is taken by the layer methods and Occlusion, each of its "
            f"columns in turn; this call takes one target per image, got shape {classes.shape}"
        )
    if classes.shape != (n,):
        raise ValueError(f"got {classes.size} targets for a batch of {n} images; give one int or {n}")
    classes = classes.astype(np.int64)
    if n_classes is not None:
        check_class_range(classes, n_classes)
    return classes


def check_class_range(classes: np.ndarray, n_classes: int) -> None:
    """A ``ValueError`` with the valid range when a class index lies outside ``0..n_classes-1``."""
    bad = (classes < 0) | (classes >= n_classes)
    if bad.any():
        raise ValueError(f"class index {int(classes[bad][0])} is out of range: valid classes are 0..{n_classes - 1}")


def output_classes(output_shape: tuple[int, ...] | None, target: Target) -> int | None:
    """The number of classes of an ``(N, classes)`` output shape, for checking class targets before the
    forward; a callable target needs none. Any other output shape with class targets is refused."""
    if callable(target) or output_shape is None:
        return None
    if len(output_shape) != 2:
        raise ValueError(
            f"the model's output has shape {tuple(output_shape)}, not (N, classes); "
            "give target= a callable that maps the output to one score per image"
        )
    return int(output_shape[1])


def class_targets(target: Target, logits: np.ndarray) -> np.ndarray:
    """Resolve ``None | int | sequence`` to one class index per image, checked against ``logits``.

    ``None`` means the top-1 class of each image. Raises ``ValueError`` with the valid range when
    an index is out of range or the number of targets differs from the batch size.
    """
    n_classes = output_classes(tuple(logits.shape), None)
    if target is None:
        return np.argmax(logits, axis=1).astype(np.int64)
    return requested_classes(target, logits.shape[0], n_classes)


def check_rule(rule: str) -> str:
    """``rule`` if it is one of ``RULES`` (plain, guided, deconvnet), else a ``ValueError`` listing them."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    return rule


# where a probe reads a layer: its output (the papers' A) or its input (the previous layer's output, as the layer
# sees it)
AT = ("output", "input")


def check_at(at: str) -> str:
    """``at`` if it is ``"output"`` or ``"input"``, else a ``ValueError`` naming them."""
    if at not in AT:
        raise ValueError(f"at must be 'output' or 'input' (where a layer is read), got {at!r}")
    return at


def unit_target(target: Target) -> Any:
    """``target`` when it scores a unit of an internal layer instead of the model's outputs, else ``None``.

    Such a target (``gradcam.targets.Neuron``) has a ``layer`` and ``layer_score(activation, channel_axis)``; the
    backends sit below ``gradcam.targets`` and know it by these two members, capture its layer in the explaining
    forward and score that layer's output with it.
    """
    return target if hasattr(target, "layer") and callable(getattr(target, "layer_score", None)) else None


def positive_int(value: Any, what: str) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``what`` unless it is a whole number >= 1."""
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)


INPUT_LAYOUTS = {
    (1, 1): "N, C, L", (1, -1): "N, L, C",
    (2, 1): "N, C, H, W", (2, -1): "N, H, W, C",
    (3, 1): "N, C, D, H, W", (3, -1): "N, D, H, W, C",
}
"""The input layouts by ``(grid axes, channel axis)``: signals, images, volumes and clips."""


def input_layout(grid: int | None, channel_axis: int) -> str:
    """How messages spell the input layout of a model with a ``grid`` of 1 to 3 axes (``None``: not known,
    every grid named) and its channels on ``channel_axis`` (1 or -1)."""
    axis = 1 if channel_axis == 1 else -1
    if grid in (1, 2, 3):
        return INPUT_LAYOUTS[grid, axis]
    return ") or (".join(INPUT_LAYOUTS[g, axis] for g in (1, 2, 3))


def check_input(x: np.ndarray) -> None:
    """Refuse input that would give a silent wrong map: non-finite values."""
    if not np.isfinite(x).all():
        raise ValueError("the input contains NaN or Inf values; explanations of non-finite input are refused")


def checked_batch(batch: np.ndarray, layout: str, grid: int | None = None) -> np.ndarray:
    """``batch`` if it is a finite batch with a grid of ``grid`` axes (``None``: 1 to 3, as the model's grid is
    not known) besides the batch and channel axes; else a ``ValueError`` that names ``layout`` (e.g.
    ``"N, H, W, C"``) and, for a single example, how to add the batch dimension, for a signal without
    channels, how to add the channel axis."""
    allowed = (grid + 2,) if grid else (3, 4, 5)
    if batch.ndim not in allowed:
        if grid and batch.ndim == grid + 1:
            hint = " (add the batch dimension: x[None])"
            if grid == 1:
                channel = "x[:, :, None]" if layout.endswith("C") else "x[:, None, :]"
                hint = f" (add the batch dimension, x[None], or for a batch of signals the channel axis: {channel})"
        elif grid is None and batch.ndim == 2:
            hint = " (a batch of signals (N, L) needs a channel axis: x[:, None, :] channels first, x[:, :, None] last)"
        else:
            hint = ""
        raise ValueError(f"expected a batch ({layout}), got shape {tuple(batch.shape)}{hint}")
    check_input(batch)
    return batch


def refuse_torch_tensor(x: Any, framework: str, layout: str) -> None:
    """A ``TypeError`` for a torch tensor handed to a model of another framework, with the transpose to use."""
    if type(x).__module__.split(".")[0] == "torch":
        raise TypeError(
            f"a torch tensor was given to a {framework} model; pass a NumPy array in the {framework} model's own "
            f"layout ({layout}), e.g. x.permute(0, 2, 3, 1).numpy() for an NCHW torch batch"
        )


def predict_in_chunks(
    forward: Callable[[Any], np.ndarray], batch: Any, batch_size: int | None, pad: bool
) -> np.ndarray:
    """``forward`` over ``batch`` at most ``batch_size`` rows at a time, outputs concatenated as float32.

    ``batch`` is one array or, for a model with several inputs, a list or dict of arrays with the same rows
    (``gradcam.backends.inputs.parts_map``). With ``pad``, a shorter last chunk is padded with zeros to full size
    (and the padding dropped), so that a compiled function traced for one shape serves every chunk.
    """
    n = multi.parts_rows(batch)
    size = n if batch_size is None else positive_int(batch_size, "batch_size")
    outputs = []
    for start in range(0, n, size):
        rows = slice(start, start + size)
        chunk = multi.parts_map(lambda part, rows=rows: part[rows], batch)
        if pad and n > size and n - start < size:
            chunk = multi.parts_map(lambda part: _zero_padded(part, size), chunk)
        outputs.append(np.asarray(forward(chunk), dtype=np.float32)[: min(size, n - start)])
    return np.concatenate(outputs, axis=0)


def _zero_padded(part: np.ndarray, size: int) -> np.ndarray:
    padding = np.zeros((size - len(part), *part.shape[1:]), dtype=part.dtype)
    return np.concatenate([part, padding], axis=0)


def resolve_path(names: Iterable[str], spec: str) -> str:
    """The layer path ``spec`` names: itself, or the one nested path ending in ``/spec``.

    Raises
    ------
    KeyError
        When ``spec`` ends several paths (listing them) or none (naming the closest).
    """
    names = list(names)
    if spec in names:
        return spec
    nested = [name for name in names if name.endswith("/" + spec)]
    if len(nested) == 1:
        return nested[0]
    if nested:
        raise KeyError(f"layer name {spec!r} is ambiguous; give the full path, one of: {', '.join(nested)}")
    raise unknown_layer_error(spec, names)


def layers_did_not_run(missing: Sequence[str]) -> RuntimeError:
    """The error for requested layers that the forward never called."""
    return RuntimeError(
        f"layer(s) {', '.join(map(repr, missing))} did not run in the model's forward pass "
        "for this input; choose layers that the forward calls"
    )


def ambiguous_ablation(name: str) -> ValueError:
    """The error for ablating a layer that runs more than once in one forward: which call to ablate is a guess."""
    return ValueError(
        f"layer {name!r} runs more than once in one forward; ablating one of its calls would be a guess, "
        "choose a layer that runs once"
    )


class ScoreIndependentError(RuntimeError):
    """The target score does not depend on a requested layer (or the input): no gradient path reaches it.

    ``layers``: the names of those layers (empty when it is the input)."""

    def __init__(self, message: str, layers: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.layers = tuple(layers)


def score_independent_of(names: Sequence[str], why: str = "") -> ScoreIndependentError:
    """The error for layers (or the input) whose value the target score does not depend on."""
    return ScoreIndependentError(
        f"the target score does not depend on the output of {', '.join(map(repr, names))}: the model does not "
        f"use what that layer returns; choose a layer that the output is computed from{why}",
        names,
    )


def target_function_shape_error(n: int, got: Any) -> ValueError:
    """The error for a target function whose result is not one score per image."""
    return ValueError(f"the target function must return a tensor of shape ({n},), one score per image; got {got}")


def channels_first(array: np.ndarray, channel_axis: int) -> np.ndarray:
    """A batch ``(N, ...)`` of 3 to 5 dimensions (signals, images, volumes) with its channels on ``channel_axis``
    as contiguous float32 channels first ``(N, C, *grid)``; other ranks unchanged."""
    if 3 <= array.ndim <= 5:
        array = np.moveaxis(array, channel_axis, 1)
    return np.ascontiguousarray(array, dtype=np.float32)


class LRUCache:
    """At most ``size`` built values by key; the least recently used goes first.

    Compiled functions are cached per model and request; a new target lambda per call would otherwise pile up.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self.entries: collections.OrderedDict[Hashable, Any] = collections.OrderedDict()

    def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
        """The value for ``key``, built by ``build()`` on first use."""
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        value = self.entries[key] = build()
        if len(self.entries) > self.size:
            self.entries.popitem(last=False)
        return value

    def values(self) -> Iterable[Any]:
        return self.entries.values()

    def __len__(self) -> int:
        return len(self.entries)


def unknown_layer_error(name: str, names: Sequence[str]) -> KeyError:
    """A ``KeyError`` naming the closest real layer names."""
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else f"; the model has {len(names)} layers (see layer_names)"
    return KeyError(f"no layer named {name!r}{hint}")


def with_better_layer(error: layouts.LayoutError, automatic: Callable[[], str]) -> layouts.LayoutError:
    """``error``, naming the automatic layer (``automatic()``) when the refused layer was not batch-first."""
    if not isinstance(error, layouts.NotBatchFirstError):
        return error
    try:
        name = automatic()
    except (ValueError, KeyError, RuntimeError, TypeError):
        return error
    return layouts.NotBatchFirstError(f"{error}; the automatic layer of this model is {name!r}")


def ablation_axis(
    name: str,
    shape: tuple[int, ...],
    reshape: Reshape | None,
    native: str,
    input_size: tuple[int, ...],
    batch: int,
) -> tuple[int, int]:
    """Where channel ``k`` of the probe's ``(N, K, *grid)`` lies in a layer's own output: ``(axis, first)``, the
    channel axis (1 or -1) and, for tokens, the first patch token (the special tokens before it are not zeroed).

    Raises
    ------
    ValueError
        For a ``reshape`` function (which channel it makes of which value is unknown: give a layout name), or an
        output that does not read in the layout (``layouts.read``'s reasons).
    """
    if reshape is not None and not isinstance(reshape, (str, layouts.Layout)):
        raise ValueError(
            f"ablating a channel of layer {name!r} needs its layout by name (layout='NHWC', 'NTC:1', ...); a reshape "
            "function does not say which value of the output a channel is"
        )
    layouts.check_batch_first(name, shape, batch)
    layout = layouts.infer(shape, native, input_size) if reshape is None else layouts.parse(reshape)
    if len(shape) != layout.rank():
        raise layouts.LayoutError(
            f"layer {name!r}: layout {str(layout)!r} needs a {layout.rank()}-D output, but it has shape {shape}"
        )
    return (1 if layout.channels_first else -1), layout.special_tokens


def required_layers(layers: Any) -> list[Any]:
    """``layer_list(layers)``, refused when empty: a probe reads the layers it is given, and the default layer is
    chosen once, by the method (``Method.layers_for``), from ``default_layer``."""
    specs = layer_list(layers)
    if not specs:
        raise ValueError("probe needs at least one layer; default_layer(model, x) gives the default")
    return specs


def layer_list(layers: Any) -> list[Any]:
    """A single layer spec or a list of them, as a list."""
    if layers is None:
        return []
    if isinstance(layers, (list, tuple)):
        return list(layers)
    return [layers]


def read_map(
    name: str,
    array: np.ndarray,
    reshape: Reshape | None,
    native: str,
    input_size: tuple[int, ...],
    batch: int,
) -> tuple[np.ndarray, str]:
    """A layer output (or its gradient) as ``(N, K, *grid)`` float32 (``(N, K, h, w)`` for images, the grid of
    the input ``input_size``), and the layout it was read with.

    ``array`` is in the framework's own layout (``native``: ``"NCHW"`` or ``"NHWC"``, channels first or last for
    a map of any rank). ``reshape``
    is a layout name (``"NHWC"``, ``"NTC:1"``, ...; ``layouts.read``), ``None`` to infer the layout from the
    shape, or a function on the NumPy array, which gets a map of the input's rank channels first
    and is applied alike to activations and gradients: a pure re-layout of values commutes with
    differentiation, so the gradient of the re-laid-out tensor is the re-laid-out gradient.

    Raises
    ------
    ValueError
        (``layouts.LayoutError``) the first dimension is not the batch, the layout does not fit, or the result
        is not a map with at least two cells.
    """
    if reshape is None or isinstance(reshape, (str, layouts.Layout)):
        out, layout = layouts.read(name, array, reshape, native, input_size, batch)
        return out, str(layout)
    layouts.check_batch_first(name, tuple(array.shape), batch)
    rank = len(input_size) + 2
    if array.ndim == rank and not layouts.Layout(native).channels_first:
        array = np.moveaxis(array, -1, 1)
    out = np.asarray(reshape(array))
    if out.ndim != rank or int(np.prod(out.shape[2:])) < 2:
        wanted = "(N, K, h, w) with h * w > 1" if rank == 4 else f"(N, K, *grid) with {rank - 2} grid axes"
        raise layouts.LayoutError(
            f"layer {name!r}: reshape= returned shape {tuple(out.shape)}, which is not a spatial map {wanted} "
            "(the input's grid)"
        )
    return np.ascontiguousarray(out, dtype=np.float32), "reshape"


def vit_reshape(tokens: np.ndarray, grid: tuple[int, int] | None = None, class_tokens: int = 1) -> np.ndarray:
    """ViT tokens ``(N, class_tokens + h*w, C)`` -> a channels-first grid ``(N, C, h, w)``.

    The leading ``class_tokens`` tokens are dropped; ``grid`` defaults to the square grid
    ``h = w = sqrt(number of patch tokens)``.
    """
    if tokens.ndim != 3:
        raise ValueError(f"vit_reshape expects tokens of shape (N, tokens, C), got {tuple(tokens.shape)}")
    patches = tokens[:, class_tokens:, :]
    n, t, c = patches.shape
    if grid is None:
        side = int(round(t ** 0.5))
        if side * side != t:
            raise ValueError(f"{t} patch tokens do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    h, w = grid
    if h * w != t:
        raise ValueError(f"grid {grid} does not hold {t} patch tokens")
    return patches.reshape(n, h, w, c).transpose(0, 3, 1, 2)


def select_output(outputs: Any, output: Hashable) -> Any:
    """``outputs[output]`` (a key or index) or ``outputs.output`` (a dataclass field); ``outputs`` for ``None``.

    The ``output=`` of every backend's ``explained_model``, on the model's outputs whatever their framework.

    Raises
    ------
    KeyError
        When ``output`` names nothing in ``outputs``; the message lists what there is.
    """
    if output is None:
        return outputs
    if isinstance(outputs, Mapping):
        if output in outputs:
            return outputs[output]
    elif isinstance(output, str) and hasattr(outputs, output):
        return getattr(outputs, output)
    elif isinstance(output, int) and isinstance(outputs, (tuple, list)) and -len(outputs) <= output < len(outputs):
        return outputs[output]
    raise KeyError(f"the model's output has no {output!r}; it has {_available(outputs)}")


def _available(outputs: Any) -> str:
    if isinstance(outputs, Mapping):
        return f"keys {list(outputs)}"
    if dataclasses.is_dataclass(outputs):
        return f"fields {[f.name for f in dataclasses.fields(outputs)]}"
    if isinstance(outputs, (tuple, list)):
        return f"{len(outputs)} entries (indices 0..{len(outputs) - 1})"
    return f"a single {type(outputs).__name__}"
