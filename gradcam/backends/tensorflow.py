"""TensorFlow / Keras 3 backend: activations and gradients of a ``keras.Model`` as NumPy arrays.

Why it is built this way (DESIGN.md sections 5 and 7):

* Keras 3 has no forward hooks, so a requested layer is observed by giving the layer object, for
  the duration of one trace, an instance attribute ``call`` that runs the class's own ``call`` and
  hands the output to a ``tf.GradientTape``. This works alike for Sequential, functional and
  subclassed models and for layers inside nested models, because every one of them reaches its
  layers through ``Layer.__call__``, which looks ``call`` up on the instance.
* Grad-CAM should cost one inference. The tape is opened with ``watch_accessed_variables=False``
  and watches only the layer outputs, so it records nothing before the earliest layer and never a
  variable; ``tape.gradient`` then forms gradients for those tensors alone.
* Everything runs inside a ``tf.function`` that is built once per (model, layers, rule, target
  kind) and kept in a per-model cache that dies with the model; TensorFlow itself retraces it only
  for a new input shape. Calling it from eager code therefore costs what compiled inference costs.
  ``tf.config.run_functions_eagerly(True)`` runs the very same code eagerly.
* Guided Backprop and Deconvnet replace the ReLU activations Keras knows (``activation="relu"`` on
  any layer, a ``ReLU`` layer without slope, cap or threshold, ``Activation("relu")``) by a
  ``tf.custom_gradient`` ReLU whose backward rule is read when the backward is built. The
  layer gradients of Guided Grad-CAM are built under the plain rule and the input gradient under
  the requested one, from one forward. A ``Relu`` op of the traced forward that Keras cannot see
  (``tf.nn.relu`` inside a subclassed ``call``) would keep its plain backward, so it is refused.
* The model is left as found: every attribute set on a layer is removed or put back in a
  ``finally``, also when the forward raises. They exist only while a trace runs (the first call
  per input shape); calling the same model from another thread at that moment is not supported.
  A layer called more than once in one forward is taken at its **last** call, as in the torch backend.
"""
from __future__ import annotations

import collections
import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from gradcam.backends import common
from gradcam.backends.probe import InputGradient, Probe

__all__ = [
    "is_model",
    "to_numpy",
    "probe",
    "input_gradient",
    "predict",
    "layer_names",
    "layer_shapes",
    "default_layer",
    "predict_ablated",
    "dense_weight",
]

RULES = ("plain", "guided", "deconvnet")

Reshape = Callable[[np.ndarray], np.ndarray]

# compiled functions kept per model; more than this many layer sets / target functions on one
# model and the least recently used is dropped (a new lambda per call would otherwise pile up)
_FUNCTIONS_PER_MODEL = 16

_FUNCTIONS: weakref.WeakKeyDictionary[keras.Model, collections.OrderedDict] = weakref.WeakKeyDictionary()

_RELU_FUNCTIONS = (keras.activations.relu, keras.ops.relu, tf.nn.relu)

_backward_rule: contextvars.ContextVar[str] = contextvars.ContextVar("gradcam_tf_backward_rule", default="plain")


def is_model(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 model (Sequential, functional or subclassed)."""
    return isinstance(model, keras.Model)


def to_numpy(x: Any) -> np.ndarray:
    """The input batch as float32 NumPy in the model's layout (``(N, H, W, C)`` for channels-last)."""
    if type(x).__module__.split(".")[0] == "torch":
        raise TypeError(
            "a torch tensor was given to a Keras model; pass a NumPy array or a tf.Tensor in the Keras "
            "model's own layout (N, H, W, C), e.g. x.permute(0, 2, 3, 1).numpy() for an NCHW torch batch"
        )
    return np.asarray(x, dtype=np.float32)


def layer_names(model: keras.Model) -> list[str]:
    """Every layer of the model, nested ones as ``"submodel/layer"`` paths, outer before inner."""
    _require_model(model)
    return list(_layer_paths(model))


def layer_shapes(model: keras.Model, x: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Each layer's output shape for input ``x``, in execution order (one eager forward).

    A layer's place in the order is where its ``call`` *finished* (a nested model comes after its
    layers) at its last call; layers whose output is not one tensor are left out.
    """
    _require_model(model)
    batch = _as_batch(x)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(names: list[str], output: Any) -> Any:
        if tf.is_tensor(output):
            for name in names:
                shapes.pop(name, None)
                shapes[name] = tuple(int(d) for d in output.shape)
        return output

    with _reporting_calls(_layer_paths(model), record):
        model(tf.constant(batch), training=False)
    return list(shapes.items())


def default_layer(model: keras.Model, x: Any) -> str:
    """The last layer, in execution order, whose output is a spatial map (h, w > 1); one image of ``x`` is used."""
    _require_model(model)
    batch = _as_batch(x)
    layers = _layer_paths(model)
    spatial = [name for name, shape in layer_shapes(model, batch[:1]) if _is_spatial(shape, layers[name])]
    if not spatial:
        raise ValueError(
            "no layer of this model outputs a spatial map (N, h, w, C) with h, w > 1; "
            "pass layers= explicitly, with reshape= for token layers (gradcam.vit_reshape)"
        )
    return spatial[-1]


def predict(model: keras.Model, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` as float32 NumPy, forward only, compiled.

    ``batch_size`` splits the batch into chunks of that many images; a shorter last chunk is padded
    to full size (and the padding dropped) so that one compiled shape serves every chunk.
    """
    _require_model(model)
    batch = _as_batch(x)
    forward = _compiled(model, ("predict",), lambda: _ForwardGraph(model))
    n = batch.shape[0]
    size = n if batch_size is None else _positive(batch_size, "batch_size")
    outputs = []
    for start in range(0, n, size):
        chunk = batch[start : start + size]
        padded = _pad_batch(chunk, size) if n > size else chunk
        outputs.append(forward(tf.constant(padded)).numpy()[: len(chunk)])
    return np.concatenate(outputs, axis=0).astype(np.float32, copy=False)


def probe(
    model: keras.Model,
    x: Any,
    layers: Any = None,
    target: common.Target = None,
    reshape: Reshape | None = None,
) -> Probe:
    """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one backward, compiled.

    Parameters
    ----------
    model
        A Keras 3 model, run with ``training=False``.
    x
        ``(N, H, W, C)`` NumPy array or ``tf.Tensor`` (the model's own layout).
    layers
        ``None`` (the default layer), a layer name, a ``"submodel/layer"`` path (or a layer name that is
        unique among the nested ones), a layer object of the model, or a list of them.
    target
        ``None`` (top-1 class per image), an int, one int per image, or a callable
        ``f(outputs) -> (N,)`` written in TF ops. The gradient is that of ``sum_n y_n``.
    reshape
        Applied to each layer's activations and gradients (as NumPy, after NHWC -> NCHW for 4-D
        outputs) to get ``(N, K, h, w)``, e.g. ``gradcam.vit_reshape`` for ViT tokens.
    """
    _require_model(model)
    batch = _as_batch(x)
    specs = common.layer_list(layers) or [default_layer(model, batch)]
    layers = _resolve_layers(model, specs)
    result = _run(model, batch, list(layers), "plain", False, target)
    return _make_probe(layers, result, target, batch, reshape)


def input_gradient(
    model: keras.Model,
    x: Any,
    target: common.Target = None,
    rule: str = "plain",
    layers: Any = None,
    reshape: Reshape | None = None,
) -> InputGradient:
    """``d y / d x`` as ``(N, C, H, W)`` float32, with the ReLU backward given by ``rule``.

    ``rule``: ``"plain"``; ``"guided"`` (Guided Backprop: a ReLU passes the gradient only where its
    input > 0 AND the incoming gradient > 0); ``"deconvnet"`` (only where the incoming gradient > 0).
    The rules act on Keras ReLU activations: ``activation="relu"`` on any layer, ``ReLU()`` layers
    without slope, cap or threshold, and ``Activation("relu")``. A ``tf.nn.relu`` called inside a
    subclassed ``call`` is out of reach, and a model with no ReLU Keras can see is refused: both
    ``ValueError``.
    With ``layers``, the same forward also captures those layers, and ``result.probe`` holds their
    activations and *plain* gradients (Guided Grad-CAM).
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    _require_model(model)
    batch = _as_batch(x)
    if rule != "plain" and not _relu_layers(model):
        raise ValueError(
            f"{rule} needs ReLU activations that Keras can see (activation='relu', ReLU(), "
            "Activation('relu')); this model has none"
        )
    resolved = _resolve_layers(model, common.layer_list(layers))
    result = _run(model, batch, list(resolved), rule, True, target)
    layer_probe = _make_probe(resolved, result, target, batch, reshape) if resolved else None
    return InputGradient(
        gradient=_channels_first_input(result["input_gradient"]),
        scores=result["scores"],
        targets=_targets(target, result),
        logits=result.get("logits"),
        probe=layer_probe,
    )


def predict_ablated(model: keras.Model, x: Any, layer: Any, channels: Any) -> np.ndarray:
    """The model's outputs ``(N, ...)`` with channel ``channels[n]`` of ``layer``'s output set to zero
    for image ``n`` (``-1``: nothing zeroed), forward only, compiled; the model is not changed.

    Channels count as in the probe's ``(N, K, h, w)`` arrays. A layer that runs more than once in
    one forward is refused: which of its calls to ablate would be a guess.
    """
    _require_model(model)
    batch = _as_batch(x)
    ((name, _),) = _resolve_layers(model, [layer]).items()
    chosen = np.asarray(channels, dtype=np.int64).reshape(-1)
    if chosen.shape != (batch.shape[0],):
        raise ValueError(f"got {chosen.size} channels for a batch of {batch.shape[0]} images; give one per image")
    graph = _compiled(model, ("ablated", name), lambda: _AblatedGraph(model, name))
    return graph(tf.constant(batch), tf.constant(chosen)).numpy()


def dense_weight(model: keras.Model, layer: Any) -> np.ndarray:
    """The ``(classes, inputs)`` weight matrix of a ``Dense`` layer (Keras stores its transpose)."""
    _require_model(model)
    ((name, dense),) = _resolve_layers(model, [layer]).items()
    if not isinstance(dense, keras.layers.Dense):
        raise ValueError(f"layer {name!r} is a {type(dense).__name__}, not a Dense layer")
    return np.asarray(dense.kernel, dtype=np.float32).T.copy()


# --- the compiled forward and backward ------------------------------------------------------


def _run(
    model: keras.Model,
    batch: np.ndarray,
    names: list[str],
    rule: str,
    with_input_gradient: bool,
    target: common.Target,
) -> dict[str, Any]:
    """Run the cached compiled probe on ``batch``; results as NumPy (``activations``/``gradients`` tuples)."""
    target_fn = target if callable(target) else None
    key = ("probe", tuple(names), rule, with_input_gradient, target_fn)
    graph = _compiled(model, key, lambda: _ProbeGraph(model, tuple(names), rule, with_input_gradient, target_fn))
    classes = _requested_classes(target, batch.shape[0])
    outputs = graph(tf.constant(batch), tf.constant(classes))
    return tf.nest.map_structure(lambda t: t.numpy(), outputs)


# The traced callables are objects, not closures: TensorFlow's "frequent retracing" warning counts
# the traces of every function sharing one ``__code__``, which would lump all cached probes together.


class _ForwardGraph:
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


class _AblatedGraph:
    """``(x, channels) -> outputs`` (float32) with one channel per image of one layer's output zeroed."""

    def __init__(self, model: keras.Model, name: str) -> None:
        self.model_ref = weakref.ref(model)
        self.name = name

    def __call__(self, x: tf.Tensor, channels: tf.Tensor) -> tf.Tensor:
        model = self.model_ref()
        layer = _layer_paths(model)[self.name]
        calls: list[None] = []

        def ablate(layer_names: list[str], output: Any) -> Any:
            calls.append(None)
            if not tf.is_tensor(output) or output.shape.rank != 4:
                raise ValueError(f"layer {self.name!r} does not output one 4-D map; it cannot be ablated by channel")
            channel_axis = -1 if _channels_last(layer) else 1
            keep = 1 - tf.one_hot(channels, tf.shape(output)[channel_axis], dtype=output.dtype)
            keep = keep[:, None, None, :] if channel_axis == -1 else keep[:, :, None, None]
            return output * keep

        with _reporting_calls({self.name: layer}, ablate):
            outputs = model(x, training=False)
        if len(calls) != 1:
            raise ValueError(
                f"layer {self.name!r} runs {len(calls)} times in one forward; ablating one of its calls would "
                "be a guess, choose a layer that runs once"
            )
        if not tf.is_tensor(outputs):
            raise TypeError(f"the model returned a {type(outputs).__name__}, not a tensor")
        return tf.cast(outputs, tf.float32)


class _ProbeGraph:
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
    ) -> None:
        self.model_ref = weakref.ref(model)
        self.names = names
        self.rule = rule
        self.with_input_gradient = with_input_gradient
        self.target_fn = target_fn
        # Guided Grad-CAM: the layers' plain gradients and the input's rule gradient need two backwards
        self.two_backwards = with_input_gradient and rule != "plain" and bool(names)

    def __call__(self, x: tf.Tensor, classes: tf.Tensor) -> dict[str, Any]:
        with tf.GradientTape(watch_accessed_variables=False, persistent=self.two_backwards) as tape:
            if self.with_input_gradient:
                tape.watch(x)
            outputs, captured = self._forward(x, tape)
            scores, targets = _target_scores(outputs, classes, self.target_fn)
            total = tf.reduce_sum(scores)
        result = {"scores": scores, "targets": targets}
        if tf.is_tensor(outputs) and outputs.shape.rank == 2:
            result["logits"] = tf.cast(outputs, tf.float32)
        layer_outputs = [captured[name] for name in self.names]
        if self.with_input_gradient and not self.two_backwards:
            # one backward reaches the input and, for the plain rule, the layers on its way
            with _rule(self.rule):
                gradients = _gradients(tape, total, layer_outputs + [x], list(self.names) + ["input"])
            result["input_gradient"] = tf.cast(gradients.pop(), tf.float32)
        else:
            with _rule("plain"):
                gradients = _gradients(tape, total, layer_outputs, list(self.names))
            if self.with_input_gradient:
                with _rule(self.rule):
                    (input_gradient,) = _gradients(tape, total, [x], ["input"])
                result["input_gradient"] = tf.cast(input_gradient, tf.float32)
        result["activations"] = tuple(tf.cast(output, tf.float32) for output in layer_outputs)
        result["gradients"] = tuple(tf.cast(g, tf.float32) for g in gradients)
        return result

    def _forward(self, x: tf.Tensor, tape: tf.GradientTape) -> tuple[Any, dict[str, tf.Tensor]]:
        """The model's outputs, and each requested layer's output (watched by ``tape``) at its last call."""
        model = self.model_ref()
        paths = _layer_paths(model)
        captured: dict[str, tf.Tensor] = {}

        def watch(layer_names: list[str], output: Any) -> Any:
            if not tf.is_tensor(output):
                raise TypeError(
                    f"layer {layer_names[0]!r} returns a {type(output).__name__}, not a tensor; "
                    "choose a layer whose output is one tensor"
                )
            tape.watch(output)
            for name in layer_names:
                captured[name] = output
            return output

        with contextlib.ExitStack() as patches:
            if self.rule != "plain":
                patches.enter_context(_rectified(_relu_layers(model)))
            patches.enter_context(_reporting_calls({name: paths[name] for name in self.names}, watch))
            outputs = model(x, training=False)
        missing = [name for name in self.names if name not in captured]
        if missing:
            raise RuntimeError(
                f"layer(s) {', '.join(map(repr, missing))} did not run in the model's forward pass "
                "for this input; choose layers that the forward calls"
            )
        return outputs, captured


def _gradients(tape: tf.GradientTape, total: tf.Tensor, sources: list[tf.Tensor], names: list[str]) -> list[tf.Tensor]:
    """``d total / d sources``, nothing else; a source the score does not depend on is an error."""
    if not sources:
        return []
    grads = tape.gradient(total, sources)
    unused = [name for name, grad in zip(names, grads) if grad is None]
    if unused:
        raise RuntimeError(
            f"the target score does not depend on {', '.join(map(repr, unused))}: "
            "choose a layer that the output is computed from"
        )
    return list(grads)


def _target_scores(
    outputs: Any, classes: tf.Tensor, target_fn: Callable[[Any], Any] | None
) -> tuple[tf.Tensor, tf.Tensor]:
    """``(scores (N,), targets (N,))`` in the graph; ``classes`` holds -1 where the top-1 class is wanted.

    An out-of-range class is clipped into range here, so that the kernel cannot fail before the
    range is checked against the logits afterwards, with the shared message.
    """
    n = tf.shape(classes)[0]
    if target_fn is not None:
        scores = target_fn(outputs)
        if not tf.is_tensor(scores) or scores.shape.rank != 1:
            shape = tuple(scores.shape) if tf.is_tensor(scores) else type(scores).__name__
            raise ValueError(
                f"the target function must return a tensor of shape (N,), one score per image; got {shape}"
            )
        return tf.cast(scores, tf.float32), tf.fill([n], tf.constant(-1, tf.int64))
    if not tf.is_tensor(outputs) or outputs.shape.rank != 2:
        shape = tuple(outputs.shape) if tf.is_tensor(outputs) else type(outputs).__name__
        raise ValueError(
            f"the model's output has shape {shape}, not (N, classes); "
            "give target= a callable that maps the output to one score per image"
        )
    logits = tf.cast(outputs, tf.float32)
    top1 = tf.argmax(logits, axis=1, output_type=tf.int64)
    last_class = tf.shape(logits, out_type=tf.int64)[1] - 1
    targets = tf.where(classes < 0, top1, tf.minimum(tf.cast(classes, tf.int64), last_class))
    return tf.gather(logits, targets, batch_dims=1), targets


def _requested_classes(target: common.Target, n: int) -> np.ndarray:
    """One class index per image for the graph (-1: top-1); counts and types checked before the forward."""
    if target is None or callable(target):
        return np.full(n, -1, dtype=np.int64)
    classes = np.asarray(target)
    if classes.dtype.kind not in "iu":
        raise ValueError(f"class targets must be integers, got {target!r}")
    if classes.ndim == 0:
        classes = np.full(n, int(classes))
    if classes.shape != (n,):
        raise ValueError(f"got {classes.size} targets for a batch of {n} images; give one int or {n}")
    return classes.astype(np.int64)


def _targets(target: common.Target, result: dict[str, Any]) -> np.ndarray:
    """The targets the graph used, with class indices checked against the logits (shared message)."""
    if target is None or callable(target):
        return result["targets"].astype(np.int64)
    return common.class_targets(target, result["logits"])


def _make_probe(
    layers: dict[str, keras.layers.Layer],
    result: dict[str, Any],
    target: common.Target,
    batch: np.ndarray,
    reshape: Reshape | None,
) -> Probe:
    targets = _targets(target, result)
    activations, gradients = {}, {}
    for (name, layer), a, g in zip(layers.items(), result["activations"], result["gradients"]):
        activations[name] = common.canonical_map(name, _channels_first(a, layer), reshape)
        gradients[name] = common.canonical_map(name, _channels_first(g, layer), reshape)
    return Probe(
        activations=activations,
        gradients=gradients,
        scores=result["scores"],
        targets=targets,
        logits=result.get("logits"),
        input_size=_spatial_size(batch),
        layers=list(layers),
    )


def _compiled(model: keras.Model, key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """The cached ``tf.function`` of ``build()`` for ``key`` on ``model``, built on first use (the least
    recently used is dropped past ``_FUNCTIONS_PER_MODEL``)."""
    table = _FUNCTIONS.setdefault(model, collections.OrderedDict())
    fn = table.get(key)
    if fn is None:
        # traced per exact input shape, like the plain compiled inference it is measured against
        # (``reduce_retracing`` would leave the batch dimension open after a second shape)
        fn = table[key] = tf.function(build())
        if len(table) > _FUNCTIONS_PER_MODEL:
            table.popitem(last=False)
    else:
        table.move_to_end(key)
    return fn


def _trace_count(model: keras.Model) -> int:
    """How many times the compiled functions cached for ``model`` have been traced (for tests)."""
    return sum(fn.experimental_get_tracing_count() for fn in _FUNCTIONS.get(model, {}).values())


# --- layers: names, calls, ReLU rules ---------------------------------------------------------


def _layer_paths(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """``path -> layer`` for every layer reachable from the model, outer before inner."""
    paths: dict[str, keras.layers.Layer] = {}

    def visit(layer: keras.layers.Layer, prefix: str) -> None:
        for child in _children(layer):
            path = prefix + child.name
            if path not in paths:
                paths[path] = child
                visit(child, path + "/")

    visit(model, "")
    return paths


def _children(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    # Keras 3 has no public accessor for the direct sublayers of an arbitrary layer (``.layers``
    # exists on models only); ``_flatten_layers`` is what ``Model.layers`` itself builds on.
    children = layer._flatten_layers(include_self=False, recursive=False)
    return [child for child in children if not isinstance(child, keras.layers.InputLayer)]


def _resolve_layers(model: keras.Model, specs: list[Any]) -> dict[str, keras.layers.Layer]:
    """``path -> layer`` for the requested layers, in the order given, without repeats."""
    paths = _layer_paths(model)
    resolved: dict[str, keras.layers.Layer] = {}
    for spec in specs:
        path = _resolve_layer(paths, spec)
        resolved.setdefault(path, paths[path])
    return resolved


def _resolve_layer(paths: dict[str, keras.layers.Layer], spec: Any) -> str:
    if isinstance(spec, str):
        if spec in paths:
            return spec
        nested = [path for path in paths if path.endswith("/" + spec)]
        if len(nested) == 1:
            return nested[0]
        if nested:
            raise KeyError(f"layer name {spec!r} is ambiguous; give the full path, one of: {', '.join(nested)}")
        raise common.unknown_layer_error(spec, list(paths))
    if isinstance(spec, keras.layers.Layer):
        for path, layer in paths.items():
            if layer is spec:
                return path
        raise ValueError(
            f"the {type(spec).__name__} layer {spec.name!r} given as a layer is not part of this model; "
            "pass one of its layers or a name from layer_names(model)"
        )
    raise TypeError(f"a layer is a name, a 'submodel/layer' path or a layer of the model, got {type(spec).__name__}")


@contextlib.contextmanager
def _reporting_calls(
    layers: dict[str, keras.layers.Layer], report: Callable[[list[str], Any], Any]
) -> Iterator[None]:
    """While open, each layer's ``call`` hands its output to ``report(names, output)`` and returns what that returns."""
    names_of: dict[int, list[str]] = {}
    objects: dict[int, keras.layers.Layer] = {}
    for name, layer in layers.items():
        names_of.setdefault(id(layer), []).append(name)
        objects[id(layer)] = layer
    with contextlib.ExitStack() as stack:
        for key, layer in objects.items():
            stack.enter_context(_instance_attribute(layer, "call", _reporting(layer.call, names_of[key], report)))
        yield


def _reporting(
    call: Callable[..., Any], names: list[str], report: Callable[[list[str], Any], Any]
) -> Callable[..., Any]:
    def reporting_call(*args: Any, **kwargs: Any) -> Any:
        return report(names, call(*args, **kwargs))

    return reporting_call


@contextlib.contextmanager
def _instance_attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.name = value`` (bypassing Keras' attribute tracking), then put back exactly what was there."""
    had = name in vars(obj)
    previous = vars(obj).get(name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if had:
            object.__setattr__(obj, name, previous)
        else:
            object.__delattr__(obj, name)


def _relu_layers(model: keras.Model) -> list[tuple[keras.layers.Layer, str]]:
    """``(layer, attribute)`` for every ReLU Keras can see: an ``activation`` attribute, or the ``call``
    of a plain ReLU layer."""
    found: dict[int, tuple[keras.layers.Layer, str]] = {}
    for layer in _layer_paths(model).values():
        activation = getattr(layer, "activation", None)
        if any(activation is relu for relu in _RELU_FUNCTIONS):
            found[id(layer)] = (layer, "activation")
        elif isinstance(layer, keras.layers.ReLU) and _is_plain_relu(layer):
            found[id(layer)] = (layer, "call")
    return list(found.values())


def _is_plain_relu(layer: keras.layers.ReLU) -> bool:
    return layer.max_value is None and float(layer.negative_slope) == 0.0 and float(layer.threshold) == 0.0


@contextlib.contextmanager
def _rectified(relus: list[tuple[keras.layers.Layer, str]]) -> Iterator[None]:
    """While open, every listed ReLU is the rule-aware ``_rectifier``.

    Inside a trace, a ``Relu`` op of the forward that did not come from one of them (``tf.nn.relu``
    called in a subclassed ``call``) would keep its plain backward: that is an error, not a quiet mix.
    """
    graph = None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
    relu_ops_before = _relu_op_count(graph)
    rectified: list[None] = []

    def activation(x: tf.Tensor) -> tf.Tensor:
        rectified.append(None)
        return _rectifier(x)

    def call(inputs: tf.Tensor, *args: Any, **kwargs: Any) -> tf.Tensor:
        return activation(inputs)

    with contextlib.ExitStack() as stack:
        for layer, attribute in relus:
            replacement = activation if attribute == "activation" else call
            stack.enter_context(_instance_attribute(layer, attribute, replacement))
        yield
    unreached = _relu_op_count(graph) - relu_ops_before - len(rectified)
    if unreached > 0:
        raise ValueError(
            f"{unreached} ReLU op(s) of this model are not Keras activations (tf.nn.relu called inside a "
            "layer's call?); guided backprop and deconvnet can change only activation='relu', ReLU() and "
            "Activation('relu')"
        )


def _relu_op_count(graph: tf.Graph | None) -> int:
    return 0 if graph is None else sum(op.type == "Relu" for op in graph.get_operations())


@tf.custom_gradient
def _rectifier(x: tf.Tensor) -> tuple[tf.Tensor, Callable[[tf.Tensor], tf.Tensor]]:
    """``max(x, 0)`` whose backward follows the rule in force when the backward is built.

    plain: ``g [x > 0]``; guided: ``g [x > 0] [g > 0]``; deconvnet: ``g [g > 0]``.
    """
    y = tf.nn.relu(x)

    def backward(g: tf.Tensor) -> tf.Tensor:
        rule = _backward_rule.get()
        if rule == "deconvnet":
            return tf.nn.relu(g)
        passed = g * tf.cast(x > 0, g.dtype)
        return tf.nn.relu(passed) if rule == "guided" else passed

    return y, backward


@contextlib.contextmanager
def _rule(rule: str) -> Iterator[None]:
    token = _backward_rule.set(rule)
    try:
        yield
    finally:
        _backward_rule.reset(token)


# --- layouts and input checks ------------------------------------------------------------------


def _channels_last(layer: keras.layers.Layer | None = None) -> bool:
    data_format = getattr(layer, "data_format", None) or keras.config.image_data_format()
    return data_format == "channels_last"


def _channels_first(array: np.ndarray, layer: keras.layers.Layer) -> np.ndarray:
    """A 4-D channels-last layer output as NCHW; other ranks are left for ``reshape``."""
    if array.ndim == 4 and _channels_last(layer):
        return array.transpose(0, 3, 1, 2)
    return array


def _channels_first_input(gradient: np.ndarray) -> np.ndarray:
    if gradient.ndim == 4 and _channels_last():
        gradient = gradient.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(gradient, dtype=np.float32)


def _spatial_size(batch: np.ndarray) -> tuple[int, int]:
    h, w = batch.shape[1:3] if _channels_last() else batch.shape[2:4]
    return int(h), int(w)


def _is_spatial(shape: tuple[int, ...], layer: keras.layers.Layer) -> bool:
    if len(shape) != 4:
        return False
    h, w = shape[1:3] if _channels_last(layer) else shape[2:4]
    return h > 1 and w > 1


def _as_batch(x: Any) -> np.ndarray:
    batch = to_numpy(x)
    if batch.ndim != 4:
        hint = " (add the batch dimension: x[None])" if batch.ndim == 3 else ""
        raise ValueError(f"expected a batch of images (N, H, W, C), got shape {tuple(batch.shape)}{hint}")
    common.check_input(batch)
    return batch


def _pad_batch(chunk: np.ndarray, size: int) -> np.ndarray:
    padding = np.zeros((size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
    return np.concatenate([chunk, padding], axis=0)


def _require_model(model: Any) -> None:
    if not is_model(model):
        raise TypeError(
            f"the tensorflow backend explains a keras.Model, got {type(model).__module__}.{type(model).__qualname__}"
        )


def _positive(value: int, what: str) -> int:
    if int(value) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)
