"""The compiled forward and backward: one ``tf.function`` per request, cached per model.

Why this file exists:

* Grad-CAM should cost one inference (DESIGN.md section 7). The tape is opened with
  ``watch_accessed_variables=False`` and watches only the layer outputs, so it records nothing before the
  earliest layer and never a variable; ``tape.gradient`` then forms gradients for those tensors alone.
* Everything runs inside a ``tf.function`` that is built once per (model, layers, rule, target kind) and
  kept in a per-model cache (``WeakKeyDictionary`` model -> ``common.LRUCache``) that dies with the model;
  TensorFlow itself retraces it only for a new input shape. Calling it from eager code therefore costs what
  compiled inference costs. ``tf.config.run_functions_eagerly(True)`` runs the very same code eagerly.
* Class targets are checked before the graph runs: the number of classes is read off the trace that the
  call then reuses (or remembered from an earlier call with that input shape), so an out-of-range class
  never costs a forward. In eager mode the first call per shape cannot know it without running; the graph
  clips classes into range so that the gather cannot fail, and the range is checked on its logits.
* The traced callables are objects, not closures: TensorFlow's "frequent retracing" warning counts the
  traces of every function sharing one ``__code__``, which would lump all cached probes together.
"""
from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from gradcam.backends import common
from gradcam.backends import inputs as multi
from gradcam.backends.tensorflow.guided import backward_rule, rectified, relu_layers
from gradcam.backends.tensorflow.layers import channel_axis, layer_paths, reporting_calls, resolve_layers

# compiled functions kept per model; more than this many layer sets / target functions on one
# model and the least recently used is dropped (a new lambda per call would otherwise pile up)
_FUNCTIONS_PER_MODEL = 16

_FUNCTIONS: weakref.WeakKeyDictionary[keras.Model, common.LRUCache] = weakref.WeakKeyDictionary()

# the number of classes each model outputs, by input shape
_CLASSES: weakref.WeakKeyDictionary[keras.Model, dict[tuple[int, ...], int]] = weakref.WeakKeyDictionary()


def compiled(model: keras.Model, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The cached ``tf.function`` of ``build()`` for ``key`` on ``model``, built on first use."""
    # traced per exact input shape, like the plain compiled inference it is measured against
    # (``reduce_retracing`` would leave the batch dimension open after a second shape)
    table = _FUNCTIONS.get(model)
    if table is None:
        table = _FUNCTIONS[model] = common.LRUCache(_FUNCTIONS_PER_MODEL)
    return table.get(key, lambda: tf.function(build()))


def trace_count(model: keras.Model) -> int:
    """How many times the compiled functions cached for ``model`` have been traced (for tests)."""
    table = _FUNCTIONS.get(model)
    return 0 if table is None else sum(fn.experimental_get_tracing_count() for fn in table.values())


def run_probe(
    model: keras.Model,
    batch: np.ndarray,
    names: list[str],
    rule: str,
    with_input_gradient: bool,
    target: common.Target,
    key: Any = None,
    at: str = "output",
) -> dict[str, Any]:
    """Run the cached compiled probe on ``batch``; results as NumPy (``activations``/``gradients`` tuples).

    ``batch`` is one array, or the list or dict of a model's several inputs with ``key`` the one explained (the
    input gradient is taken with respect to it alone). ``at``: the layers' outputs, or their inputs (``"input"``).

    ``targets`` holds the class of each image (-1 for a target function), checked against the model's
    classes before the graph runs whenever their number is known without running it.
    """
    classes = common.requested_classes(target, multi.parts_rows(batch))
    target_fn = target if callable(target) else None
    request = ("probe", tuple(names), rule, with_input_gradient, target_fn, key, common.check_at(at))
    graph = compiled(
        model, request, lambda: ProbeGraph(model, tuple(names), rule, with_input_gradient, target_fn, key, at)
    )
    x, chosen = multi.parts_map(tf.constant, batch), tf.constant(classes)
    by_class = target is not None and target_fn is None
    n_classes = _known_classes(model, graph, x, chosen) if by_class else None
    if n_classes is not None:
        common.check_class_range(classes, n_classes)
    result = tf.nest.map_structure(lambda t: t.numpy(), graph(x, chosen))
    if by_class and n_classes is None:
        n_classes = _CLASSES[model][_shapes(batch)] = int(result["logits"].shape[1])
        common.check_class_range(classes, n_classes)
    result["relu_count"] = len(graph.python_function.relu_calls) if rule != "plain" else -1
    return result


def _known_classes(model: keras.Model, graph: Any, x: tf.Tensor, classes: tf.Tensor) -> int | None:
    """The model's number of classes for inputs shaped like ``x``, known without running the model.

    Remembered from an earlier call, or read off the trace that the call is about to reuse; ``None`` when
    functions run eagerly (a model that needs eager mode may not trace at all) and the shape is new.
    """
    known = _CLASSES.setdefault(model, {})
    shape = _shapes(x)
    if shape not in known and not tf.config.functions_run_eagerly():
        # a class target on an output that is not (N, classes) fails this trace with the shared message
        logits = graph.get_concrete_function(x, classes).structured_outputs["logits"]
        if logits.shape[1] is not None:
            known[shape] = int(logits.shape[1])
    return known.get(shape)


def _shapes(x: Any) -> tuple[Any, ...]:
    """The input's shape, or its inputs' shapes (a model with several): what a trace is made for."""
    if isinstance(x, (list, tuple, dict)):
        return tuple(tuple(part.shape) for part in tf.nest.flatten(x))
    return tuple(x.shape)


class ForwardGraph:
    """``x -> outputs`` (float32), forward only; the model is held weakly so the cache can die with it."""

    def __init__(self, model: keras.Model) -> None:
        self.model_ref = weakref.ref(model)

    def __call__(self, x: tf.Tensor) -> tf.Tensor:
        outputs = self.model_ref()(x, training=False)
        if not tf.is_tensor(outputs):
            raise TypeError(
                f"the model returned a {type(outputs).__name__}, not a tensor; predict needs a model "
                "whose output is one tensor"
            )
        return tf.cast(outputs, tf.float32)


class AblatedGraph:
    """``(x, channels) -> outputs`` (float32) with one channel per image of one layer's output zeroed; the channel
    axis (and, for tokens, the first patch token) from the layer's layout, named or inferred at trace time."""

    def __init__(self, model: keras.Model, name: str, reshape: common.Reshape | None, input_size: tuple[int, ...]):
        self.model_ref = weakref.ref(model)
        self.name = name
        self.reshape = reshape
        self.input_size = input_size

    def __call__(self, x: tf.Tensor, channels: tf.Tensor) -> tf.Tensor:
        model = self.model_ref()
        layer = layer_paths(model)[self.name]
        calls: list[None] = []

        def ablate(layer_names: list[str], output: Any) -> Any:
            calls.append(None)
            if not tf.is_tensor(output):
                raise ValueError(f"layer {self.name!r} does not output one tensor; it cannot be ablated by channel")
            native = "NHWC" if channel_axis(layer) == -1 else "NCHW"
            shape = tuple(int(d) for d in output.shape)
            axis, first = common.ablation_axis(self.name, shape, self.reshape, native, self.input_size, shape[0])
            keep = 1 - tf.one_hot(channels, shape[axis], dtype=output.dtype)  # (N, K)
            if len(shape) == 3 and axis == -1:
                patches = tf.cast(tf.range(shape[1]) >= first, output.dtype)  # special tokens keep every channel
                return output * (1 - (1 - keep)[:, None, :] * patches[None, :, None])
            grid = [1] * (len(shape) - 2)
            keep = tf.reshape(keep, [-1, *grid, shape[axis]] if axis == -1 else [-1, shape[axis], *grid])
            return output * keep

        with reporting_calls({self.name: layer}, ablate):
            outputs = model(x, training=False)
        if not calls:
            raise common.layers_did_not_run([self.name])
        if len(calls) > 1:
            raise common.ambiguous_ablation(self.name)
        if not tf.is_tensor(outputs):
            raise TypeError(f"the model returned a {type(outputs).__name__}, not a tensor")
        return tf.cast(outputs, tf.float32)


class ProbeGraph:
    """``(x, classes) -> dict`` of activations, gradients, scores, targets (and logits, input gradient).

    ``classes`` holds one class index per image, -1 for the top-1 class. The layers' outputs are the
    only tensors the tape watches (and ``x`` when the input gradient is asked for).
    """

    def __init__(
        self,
        model: keras.Model,
        names: tuple[str, ...],
        rule: str,
        with_input_gradient: bool,
        target_fn: Callable[[Any], Any] | None,
        key: Any = None,
        at: str = "output",
    ) -> None:
        self.model_ref = weakref.ref(model)
        self.key = key  # the explained one of several inputs (None: one input)
        self.at = at  # the layers' outputs or their inputs
        self.names = names
        self.rule = rule
        self.with_input_gradient = with_input_gradient
        self.target_fn = target_fn
        self.unit = common.unit_target(target_fn)  # a Neuron: scored from its layer's output, not the outputs
        # Guided Grad-CAM: the layers' plain gradients and the input's rule gradient need two backwards
        self.two_backwards = with_input_gradient and rule != "plain" and bool(names)
        self.relu_calls: list[None] = []

    def __call__(self, x: tf.Tensor, classes: tf.Tensor) -> dict[str, Any]:
        explained = x if self.key is None else x[self.key]
        with tf.GradientTape(watch_accessed_variables=False, persistent=self.two_backwards) as tape:
            if self.with_input_gradient:
                tape.watch(explained)
            outputs, captured, unit_scores = self._forward(x, tape)
            target_fn = self.target_fn if self.unit is None else lambda _: unit_scores
            scores, targets = _target_scores(outputs, classes, target_fn)
            total = tf.reduce_sum(scores)
        result = {"scores": scores, "targets": targets}
        if tf.is_tensor(outputs) and outputs.shape.rank == 2:
            result["logits"] = tf.cast(outputs, tf.float32)
        layer_outputs = [captured[name] for name in self.names]
        if self.with_input_gradient and not self.two_backwards:
            # one backward reaches the input and, for the plain rule, the layers on its way
            with backward_rule(self.rule):
                gradients = _gradients(tape, total, layer_outputs + [explained], list(self.names) + ["input"])
            result["input_gradient"] = tf.cast(gradients.pop(), tf.float32)
        else:
            with backward_rule("plain"):
                gradients = _gradients(tape, total, layer_outputs, list(self.names))
            if self.with_input_gradient:
                with backward_rule(self.rule):
                    (input_gradient,) = _gradients(tape, total, [explained], ["input"])
                result["input_gradient"] = tf.cast(input_gradient, tf.float32)
        result["activations"] = tuple(tf.cast(output, tf.float32) for output in layer_outputs)
        result["gradients"] = tuple(tf.cast(g, tf.float32) for g in gradients)
        return result

    def _forward(
        self, x: tf.Tensor, tape: tf.GradientTape
    ) -> tuple[Any, dict[str, tf.Tensor], tf.Tensor | None]:
        """The model's outputs, each requested layer's output (or input) watched by ``tape``, at its last call,
        and a ``Neuron`` target's scores of its layer's output, seen in the same forward (``None`` for any other
        target)."""
        model = self.model_ref()
        paths = layer_paths(model)
        captured: dict[str, tf.Tensor] = {}

        def watch(layer_names: list[str], output: Any) -> Any:
            if not tf.is_tensor(output):
                raise TypeError(
                    f"layer {layer_names[0]!r} {'is called on' if self.at == 'input' else 'returns'} a "
                    f"{type(output).__name__}, not a tensor; choose a layer whose {self.at} is one tensor"
                )
            if self.at == "input":
                # the layer's own node: G counts the paths through this layer, not through other readers of the
                # tensor (a residual's shortcut), as in the torch and JAX backends
                output = tf.identity(output)
            tape.watch(output)
            for name in layer_names:
                captured[name] = output
            return output

        with contextlib.ExitStack() as patches:
            if self.rule != "plain":
                # counted while tracing: the compiled function reuses the trace, and its count with it
                self.relu_calls = patches.enter_context(rectified(relu_layers(model)))
            patches.enter_context(reporting_calls({name: paths[name] for name in self.names}, watch, self.at))
            unit_output = self._watched_unit(paths, patches)
            outputs = model(x, training=False)
        missing = [name for name in self.names if name not in captured]
        if missing:
            raise common.layers_did_not_run(missing)
        return outputs, captured, None if unit_output is None else unit_output()

    def _watched_unit(
        self, paths: dict[str, keras.layers.Layer], patches: contextlib.ExitStack
    ) -> Callable[[], tf.Tensor] | None:
        """For a ``Neuron`` target, its layer patched (after the explained layers, so that it sees what they hand
        on) to keep its last output, and the function that scores it once the forward ran; ``None`` otherwise."""
        if self.unit is None:
            return None
        (path,) = resolve_layers(self.model_ref(), [self.unit.layer])
        seen: dict[str, Any] = {}

        def keep(layer_names: list[str], output: Any) -> Any:
            seen["output"] = output
            return output

        def unit_scores() -> tf.Tensor:
            if "output" not in seen:
                raise common.layers_did_not_run([path])
            return self.unit.layer_score(seen["output"], channel_axis(paths[path]))

        patches.enter_context(reporting_calls({path: paths[path]}, keep))
        return unit_scores


def _gradients(tape: tf.GradientTape, total: tf.Tensor, sources: list[tf.Tensor], names: list[str]) -> list[tf.Tensor]:
    """``d total / d sources``, nothing else; a source the score does not depend on is an error."""
    if not sources:
        return []
    grads = tape.gradient(total, sources)
    unused = [name for name, grad in zip(names, grads, strict=True) if grad is None]
    if unused:
        raise common.score_independent_of(unused)
    return list(grads)


def _target_scores(
    outputs: Any, classes: tf.Tensor, target_fn: Callable[[Any], Any] | None
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(scores (N,), targets (N,))`` in the graph; ``classes`` holds -1 where the top-1 class is wanted.

    A class out of range is clipped into range here, so that the gather cannot fail where the range
    could not be checked before the graph ran (the first eager call); it is checked on the logits then.
    """
    n = classes.shape[0]
    if target_fn is not None:
        scores = target_fn(outputs)
        if not tf.is_tensor(scores) or scores.shape.rank != 1:
            raise common.target_function_shape_error(
                n, tuple(scores.shape) if tf.is_tensor(scores) else type(scores).__name__
            )
        # -1: no class, the score is the target function's
        return tf.cast(scores, tf.float32), tf.fill([n], tf.constant(-1, tf.int64))
    if not tf.is_tensor(outputs):
        raise ValueError(
            f"the model returned a {type(outputs).__name__}, not (N, classes); "
            "give target= a callable that maps the output to one score per image"
        )
    common.output_classes(tuple(outputs.shape), None)  # the shared error unless the output is (N, classes)
    logits = tf.cast(outputs, tf.float32)
    top1 = tf.argmax(logits, axis=1, output_type=tf.int64)
    last_class = tf.shape(logits, out_type=tf.int64)[1] - 1
    targets = tf.where(classes < 0, top1, tf.minimum(tf.cast(classes, tf.int64), last_class))
    return tf.gather(logits, targets, batch_dims=1), targets
