"""TensorFlow / Keras 3 backend: activations and gradients of a ``keras.Model`` as NumPy arrays.

This module keeps the contract (``gradcam.backends.contract.Backend``, DESIGN.md sections 5 and 7); the
parts only Keras needs each live in their own file, whose docstring says why:

* ``layers``: layer paths, and how a layer's output is seen without forward hooks (the layer's ``call``
  patched on the instance for one trace, and put back in a ``finally``).
* ``graphs``: the compiled ``tf.function`` objects and their per-model cache; a tape that watches only the
  layer outputs, so Grad-CAM costs about one inference; class targets checked before the graph runs.
* ``guided``: the custom-gradient ReLU of Guided Backprop and Deconvnet, whose rule is read when the
  backward is built, so that one forward serves the plain layer gradients and the guided input gradient.

Inputs are in the model's own layout, ``(N, H, W, C)`` for channels-last; activations and gradients come
back channels first. A layer called more than once in one forward is taken at its **last** call, as in
the torch backend.
"""
from __future__ import annotations

from typing import Any

import keras
import numpy as np
import tensorflow as tf

from gradcam.backends import common
from gradcam.backends.probe import InputGradient, Probe
from gradcam.backends.tensorflow import graphs
from gradcam.backends.tensorflow.guided import relu_layers
from gradcam.backends.tensorflow.layers import channel_axis, layer_paths, reporting_calls, resolve_layers

__all__ = [
    "NAME",
    "is_model",
    "to_numpy",
    "input_channel_axis",
    "layer_names",
    "layer_shapes",
    "default_layer",
    "probe",
    "input_gradient",
    "predict",
    "predict_ablated",
    "dense_weight",
]

NAME = "tensorflow"

_LAYOUT = "N, H, W, C"

# test hooks: the paths the backend resolves layers by, and how often its compiled functions were traced
_layer_paths = layer_paths
_trace_count = graphs.trace_count


def is_model(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 model (Sequential, functional or subclassed)."""
    return isinstance(model, keras.Model)


def to_numpy(x: Any) -> np.ndarray:
    """The input batch as float32 NumPy in the model's layout (``(N, H, W, C)`` for channels-last).

    Raises
    ------
    TypeError
        For a torch tensor, with the transpose that gives the Keras layout.
    """
    common.refuse_torch_tensor(x, "Keras", _LAYOUT)
    return np.asarray(x, dtype=np.float32)


def input_channel_axis(model: keras.Model) -> int:
    """The colour-channel axis of the model's input: -1, or 1 when Keras' image data format is channels-first."""
    return 1 if keras.config.image_data_format() == "channels_first" else -1


def layer_names(model: keras.Model) -> list[str]:
    """Every layer of the model, nested ones as ``"submodel/layer"`` paths, outer before inner."""
    _require_model(model)
    return list(layer_paths(model))


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

    with reporting_calls(layer_paths(model), record):
        model(tf.constant(batch), training=False)
    return list(shapes.items())


def default_layer(model: keras.Model, x: Any) -> str:
    """The last layer, in execution order, whose output is a spatial map (h, w > 1); one image of ``x`` is used."""
    _require_model(model)
    batch = _as_batch(x)
    paths = layer_paths(model)

    def is_spatial(name: str, shape: tuple[int, ...]) -> bool:
        if len(shape) != 4:
            return False
        h, w = shape[1:3] if channel_axis(paths[name]) == -1 else shape[2:4]
        return h > 1 and w > 1

    return common.last_spatial(layer_shapes(model, batch[:1]), is_spatial)


def predict(model: keras.Model, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` as float32 NumPy, forward only, compiled.

    ``batch_size`` splits the batch into chunks of that many images; a shorter last chunk is padded
    to full size (and the padding dropped) so that one compiled shape serves every chunk.
    """
    _require_model(model)
    batch = _as_batch(x)
    forward = graphs.compiled(model, ("predict",), lambda: graphs.ForwardGraph(model))
    return common.predict_in_chunks(lambda chunk: forward(tf.constant(chunk)).numpy(), batch, batch_size, pad=True)


def probe(
    model: keras.Model,
    x: Any,
    layers: Any,
    target: common.Target = None,
    reshape: common.Reshape | None = None,
) -> Probe:
    """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one backward, compiled.

    Parameters
    ----------
    model
        A Keras 3 model, run with ``training=False``.
    x
        ``(N, H, W, C)`` NumPy array or ``tf.Tensor`` (the model's own layout).
    layers
        A layer name, a ``"submodel/layer"`` path (or a layer name that is unique among the nested ones),
        a layer object of the model, or a non-empty list of them; ``default_layer(model, x)`` gives the default.
    target
        ``None`` (top-1 class per image), an int, one int per image, or a callable
        ``f(outputs) -> (N,)`` written in TF ops. The gradient is that of ``sum_n y_n``.
    reshape
        Applied to each layer's activations and gradients (as NumPy, after NHWC -> NCHW for 4-D
        outputs) to get ``(N, K, h, w)``, e.g. ``gradcam.vit_reshape`` for ViT tokens.

    Raises
    ------
    ValueError
        No layer, bad input, a class target out of range or of the wrong count, a non-spatial layer.
    KeyError
        An unknown or ambiguous layer name.
    RuntimeError
        A layer that did not run, or that the score does not depend on.
    """
    _require_model(model)
    batch = _as_batch(x)
    specs = common.required_layers(layers)
    resolved = resolve_layers(model, specs)
    result = graphs.run_probe(model, batch, list(resolved), "plain", False, target)
    return _make_probe(model, resolved, result, batch, reshape)


def input_gradient(
    model: keras.Model,
    x: Any,
    target: common.Target = None,
    rule: str = "plain",
    layers: Any = None,
    reshape: common.Reshape | None = None,
) -> InputGradient:
    """``d y / d x`` as ``(N, C, H, W)`` float32, with the ReLU backward given by ``rule``.

    Parameters
    ----------
    model, x, target, reshape
        As for ``probe``.
    rule
        ``"plain"``; ``"guided"`` (Guided Backprop: a ReLU passes the gradient only where its input > 0
        AND the incoming gradient > 0); ``"deconvnet"`` (only where the incoming gradient > 0). The rules
        act on Keras ReLU activations: ``activation="relu"`` on any layer, ``ReLU()`` layers without
        slope, cap or threshold, and ``Activation("relu")``.
    layers
        Optional: the same forward also captures them, and ``result.probe`` holds their activations and
        *plain* gradients (Guided Grad-CAM).

    Raises
    ------
    ValueError
        An unknown rule; a guided or deconvnet rule on a model with no ReLU Keras can see, or with a
        ``tf.nn.relu`` called inside a subclassed ``call`` (out of reach of the rule).
    """
    common.check_rule(rule)
    _require_model(model)
    batch = _as_batch(x)
    if rule != "plain" and not relu_layers(model):
        raise ValueError(
            f"{rule} needs ReLU activations that Keras can see (activation='relu', ReLU(), "
            "Activation('relu')); this model has none"
        )
    resolved = resolve_layers(model, common.layer_list(layers))
    result = graphs.run_probe(model, batch, list(resolved), rule, True, target)
    return InputGradient(
        gradient=common.channels_first(result["input_gradient"], input_channel_axis(model)),
        scores=result["scores"],
        targets=result["targets"].astype(np.int64),
        logits=result.get("logits"),
        probe=_make_probe(model, resolved, result, batch, reshape) if resolved else None,
    )


def predict_ablated(model: keras.Model, x: Any, layer: Any, channels: Any) -> np.ndarray:
    """The model's outputs ``(N, ...)`` with channel ``channels[n]`` of ``layer``'s output set to zero
    for image ``n`` (``-1``: nothing zeroed), forward only, compiled; the model is not changed.

    Channels count as in the probe's ``(N, K, h, w)`` arrays. A layer that runs more than once in
    one forward is refused: which of its calls to ablate would be a guess.
    """
    _require_model(model)
    batch = _as_batch(x)
    ((name, _),) = resolve_layers(model, [layer]).items()
    chosen = np.asarray(channels, dtype=np.int64).reshape(-1)
    if chosen.shape != (batch.shape[0],):
        raise ValueError(f"got {chosen.size} channels for a batch of {batch.shape[0]} images; give one per image")
    graph = graphs.compiled(model, ("ablated", name), lambda: graphs.AblatedGraph(model, name))
    return graph(tf.constant(batch), tf.constant(chosen)).numpy()


def dense_weight(model: keras.Model, layer: Any) -> np.ndarray:
    """The ``(classes, inputs)`` weight matrix of a ``Dense`` layer (Keras stores its transpose)."""
    _require_model(model)
    ((name, dense),) = resolve_layers(model, [layer]).items()
    if not isinstance(dense, keras.layers.Dense):
        raise ValueError(f"layer {name!r} is a {type(dense).__name__}, not a Dense layer")
    return np.asarray(dense.kernel, dtype=np.float32).T.copy()


def _make_probe(
    model: keras.Model,
    layers: dict[str, keras.layers.Layer],
    result: dict[str, Any],
    batch: np.ndarray,
    reshape: common.Reshape | None,
) -> Probe:
    """The graph's results for ``layers`` as a channels-first ``Probe``."""
    activations, gradients = {}, {}
    for (name, layer), a, g in zip(layers.items(), result["activations"], result["gradients"], strict=True):
        axis = channel_axis(layer)
        activations[name] = common.canonical_map(name, common.channels_first(a, axis), reshape)
        gradients[name] = common.canonical_map(name, common.channels_first(g, axis), reshape)
    h, w = batch.shape[1:3] if input_channel_axis(model) == -1 else batch.shape[2:4]
    return Probe(
        activations=activations,
        gradients=gradients,
        scores=result["scores"],
        targets=result["targets"].astype(np.int64),
        logits=result.get("logits"),
        input_size=(int(h), int(w)),
        layers=list(layers),
    )


def _require_model(model: Any) -> None:
    if not is_model(model):
        raise TypeError(
            f"the tensorflow backend explains a keras.Model, got {type(model).__module__}.{type(model).__qualname__}"
        )


def _as_batch(x: Any) -> np.ndarray:
    return common.checked_batch(to_numpy(x), _LAYOUT)
