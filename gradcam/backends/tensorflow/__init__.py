"""TensorFlow / Keras 3 backend: activations and gradients of a ``keras.Model`` as NumPy arrays.

This module keeps the contract (``gradcam.backends.contract.Backend``, DESIGN.md sections 5 and 7); the
parts only Keras needs each live in their own file, whose docstring says why:

* ``layers``: layer paths, and how a layer's output is seen without forward hooks (the layer's ``call``
  patched on the instance for one trace, and put back in a ``finally``).
* ``graphs``: the compiled ``tf.function`` objects and their per-model cache; a tape that watches only the
  layer outputs, so Grad-CAM costs about one inference; class targets checked before the graph runs.
* ``explained``: the model as explained: one selected output, the class score before a final softmax.
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

from gradcam.backends import choice, common, layouts
from gradcam.backends import inputs as multi
from gradcam.backends.probe import InputGradient, Probe
from gradcam.backends.tensorflow import graphs
from gradcam.backends.tensorflow.explained import Explained, explained_model
from gradcam.backends.tensorflow.layers import channel_axis, layer_paths, reporting_calls, resolve_layers

__all__ = [
    "NAME",
    "is_model",
    "to_numpy",
    "input_channel_axis",
    "layer_names",
    "layer_shapes",
    "explained_model",
    "layer_choice",
    "default_layer",
    "probe",
    "input_gradient",
    "predict",
    "predict_ablated",
    "dense_weight",
    "layer_biases",
]

NAME = "tensorflow"

_LAYOUT = "N, H, W, C"

# layers that only resample their input's map (the layer choice passes over them when they do not shrink it)
_RESAMPLING = (keras.layers.UpSampling2D, keras.layers.Resizing)

# test hooks: the paths the backend resolves layers by, and how often its compiled functions were traced
_layer_paths = layer_paths
_trace_count = graphs.trace_count


def is_model(model: Any) -> bool:
    """Whether ``model`` is a Keras 3 model (Sequential, functional or subclassed)."""
    return isinstance(model, keras.Model)


def to_numpy(x: Any) -> np.ndarray:
    """The (explained) input batch as float32 NumPy in the model's layout (``(N, H, W, C)`` for channels-last).

    Raises
    ------
    TypeError
        For a torch tensor, with the transpose that gives the Keras layout.
    """
    x = multi.explained(x)
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
    return _recorded_shapes(model, _model_inputs(model, x)[1])[0]


def _recorded_shapes(
    model: keras.Model, batch: Any
) -> tuple[list[tuple[str, tuple[int, ...]]], tuple[int, ...] | None]:
    """``layer_shapes``, and the shape of the model's output (``None`` when it is not one tensor)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(names: list[str], output: Any) -> Any:
        if tf.is_tensor(output):
            for name in names:
                shapes.pop(name, None)
                shapes[name] = tuple(int(d) for d in output.shape)
        return output

    with reporting_calls(layer_paths(model), record):
        outputs = model(multi.parts_map(tf.constant, batch), training=False)
    return list(shapes.items()), tuple(int(d) for d in outputs.shape) if tf.is_tensor(outputs) else None


def layer_choice(model: keras.Model, x: Any) -> choice.LayerChoice:
    """The automatic layer for inputs shaped like ``x``, by the rule of ``gradcam.backends.choice``.

    One eager forward lists the layers, and one compiled probe per layer tried says whether the score depends on
    it (usually the last candidate, so one). The whole batch ``x`` is used: the probe compiled for the chosen
    layer is then the very one a method runs on ``x`` (compiling costs more than computing).
    """
    _require_model(model)
    sample, called, _ = _model_inputs(model, x)
    paths = layer_paths(model)
    shapes, output_shape = _recorded_shapes(model, called)
    infos = [
        choice.LayerInfo(
            name,
            shape,
            _native(paths[name]),
            weighted=bool(paths[name].weights),
            normalization="Normalization" in type(paths[name]).__name__,
            resamples=isinstance(paths[name], _RESAMPLING),
        )
        for name, shape in shapes
    ]

    def depends(name: str) -> bool:
        # the default target (top-1 class) for class scores, so that the compiled probe is the one a method reuses
        target = None if output_shape is not None and len(output_shape) == 2 else _dependence_score
        try:
            found = probe(model, x, name, target=target)
        except common.ScoreIndependentError:
            return False
        return bool(np.any(found.gradients[name] != 0))

    return choice.choose(infos, _input_size(model, sample), sample.shape[0], depends, output_shape)


def default_layer(model: keras.Model, x: Any) -> str:
    """The automatic layer for inputs shaped like ``x``: ``layer_choice(model, x).name``."""
    return layer_choice(model, x).name


def predict(model: keras.Model, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` as float32 NumPy, forward only, compiled.

    ``batch_size`` splits the batch into chunks of that many images; a shorter last chunk is padded
    to full size (and the padding dropped) so that one compiled shape serves every chunk.
    """
    _require_model(model)
    _, called, _ = _model_inputs(model, x)
    forward = graphs.compiled(model, ("predict",), lambda: graphs.ForwardGraph(model))
    return common.predict_in_chunks(
        lambda chunk: forward(multi.parts_map(tf.constant, chunk)).numpy(), called, batch_size, pad=True
    )


def probe(
    model: keras.Model,
    x: Any,
    layers: Any,
    target: common.Target = None,
    reshape: common.Reshape | None = None,
    at: str = "output",
) -> Probe:
    """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one backward, compiled.

    Parameters
    ----------
    model
        A Keras 3 model, run with ``training=False``.
    x
        ``(N, H, W, C)`` NumPy array or ``tf.Tensor`` (the model's own layout; signals ``(N, L, C)``, volumes and
        clips ``(N, D, H, W, C)``). A functional model with several inputs takes a list or dict of them (called
        with it), or a ``gradcam.backends.inputs.Inputs`` naming the explained one, whose grid the maps have.
    layers
        A layer name, a ``"submodel/layer"`` path (or a layer name that is unique among the nested ones),
        a layer object of the model, or a non-empty list of them; ``default_layer(model, x)`` gives the default.
    target
        ``None`` (top-1 class per image), an int, one int per image, or a callable
        ``f(outputs) -> (N,)`` written in TF ops. The gradient is that of ``sum_n y_n``.
    reshape
        How each layer's output is read as ``(N, K, h, w)``: a layout name (``"NHWC"``, ``"NTC:1"``;
        ``gradcam.backends.layouts``), a function on the NumPy array (a 4-D map given to it channels first), or
        ``None`` to infer the layout from the output's shape.
    at
        ``"output"`` (the papers' ``A``) or ``"input"``: each layer's input (the first argument of its ``call``)
        and the gradient at it, read by ``reshape`` as outputs are.

    Raises
    ------
    ValueError
        No layer, bad input, a class target out of range or of the wrong count, a layer output that is not a map
        in a known layout (or whose first dimension is not the batch).
    KeyError
        An unknown or ambiguous layer name.
    RuntimeError
        A layer that did not run, or that the score does not depend on.
    """
    _require_model(model)
    batch, called, key = _model_inputs(model, x)
    specs = common.required_layers(layers)
    resolved = resolve_layers(model, specs)
    result = graphs.run_probe(model, called, list(resolved), "plain", False, target, key, at)
    try:
        return _make_probe(model, resolved, result, batch, reshape)
    except layouts.LayoutError as error:
        raise common.with_better_layer(error, lambda: default_layer(model, x)) from None


def input_gradient(
    model: keras.Model,
    x: Any,
    target: common.Target = None,
    rule: str = "plain",
    layers: Any = None,
    reshape: common.Reshape | None = None,
) -> InputGradient:
    """``d y / d x`` as ``(N, C, *grid)`` float32 (``(N, C, H, W)`` for images), with the ReLU backward given by
    ``rule``; with several inputs, with respect to the explained one only.

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
        An unknown rule; a guided or deconvnet rule on a model with a ``tf.nn.relu`` called inside a subclassed
        ``call`` (out of reach of the rule). A model without any ReLU gets the plain gradient and
        ``relu_count == 0``.
    """
    common.check_rule(rule)
    _require_model(model)
    batch, called, key = _model_inputs(model, x)
    resolved = resolve_layers(model, common.layer_list(layers))
    result = graphs.run_probe(model, called, list(resolved), rule, True, target, key)
    return InputGradient(
        gradient=common.channels_first(result["input_gradient"], input_channel_axis(model)),
        scores=result["scores"],
        targets=result["targets"].astype(np.int64),
        logits=result.get("logits"),
        probe=_make_probe(model, resolved, result, batch, reshape) if resolved else None,
        relu_count=result["relu_count"],
    )


def predict_ablated(
    model: keras.Model, x: Any, layer: Any, channels: Any, reshape: common.Reshape | None = None
) -> np.ndarray:
    """The model's outputs ``(N, ...)`` with channel ``channels[n]`` of ``layer``'s output set to zero
    for image ``n`` (``-1``: nothing zeroed), forward only, compiled; the model is not changed.

    Channels count as in the probe's ``(N, K, h, w)`` arrays: the output is read with the layout ``reshape``
    names (``None``: inferred), so tokens lose a channel at every patch token (special tokens keep theirs). A
    layer that runs more than once in one forward is refused: which of its calls to ablate would be a guess.
    """
    _require_model(model)
    batch, called, _ = _model_inputs(model, x)
    ((name, _),) = resolve_layers(model, [layer]).items()
    chosen = np.asarray(channels, dtype=np.int64).reshape(-1)
    if chosen.shape != (batch.shape[0],):
        raise ValueError(f"got {chosen.size} channels for a batch of {batch.shape[0]} images; give one per image")
    key = ("ablated", name, reshape)
    size = _input_size(model, batch)
    graph = graphs.compiled(model, key, lambda: graphs.AblatedGraph(model, name, reshape, size))
    return graph(multi.parts_map(tf.constant, called), tf.constant(chosen)).numpy()


def dense_weight(model: keras.Model, layer: Any) -> np.ndarray:
    """The ``(classes, inputs)`` weight matrix of a ``Dense`` layer (Keras stores its transpose)."""
    _require_model(model)
    ((name, dense),) = resolve_layers(model, [layer]).items()
    if not isinstance(dense, keras.layers.Dense):
        raise ValueError(f"layer {name!r} is a {type(dense).__name__}, not a Dense layer")
    return np.asarray(dense.kernel, dtype=np.float32).T.copy()


# layers whose output is ``activation(linear map of the input + bias)`` per output channel (for FullGrad)
_BIASED = (
    keras.layers.Dense,
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.Conv3D,
    keras.layers.Conv1DTranspose,
    keras.layers.Conv2DTranspose,
    keras.layers.Conv3DTranspose,
    keras.layers.DepthwiseConv1D,
    keras.layers.DepthwiseConv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
)


def layer_biases(model: keras.Model, x: Any) -> list[tuple[str, np.ndarray]]:
    """``(path, bias (C,) float32)`` of every conv, ``Dense`` and ``BatchNormalization`` layer with a bias, outer
    before inner as ``layer_names`` lists them (``x`` is not needed: the layers are listed without running).

    Batch norm, which the backend runs with ``training=False``, computes ``gamma (x - moving_mean) /
    sqrt(moving_variance + epsilon) + beta``: a linear map plus the bias ``beta - gamma * moving_mean /
    sqrt(moving_variance + epsilon)`` (``gamma = 1`` without ``scale``, ``beta = 0`` without ``center``).

    Raises
    ------
    ValueError
        A conv or dense layer with an activation other than linear: Keras adds its bias *before* the activation,
        inside the layer, and the backend sees only the layer's output, whose gradient is not the bias's. Give the
        activation its own layer (``keras.layers.ReLU()`` after the conv). A batch norm whose ``axis`` is not the
        last (channels-last) axis.
    """
    _require_model(model)
    # the final softmax or sigmoid that the explained model takes off (``explained``) is the identity in its calls
    final = getattr(model, "final", None) if isinstance(model, Explained) else None
    found = []
    for name, layer in layer_paths(model).items():
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append((name, _batch_norm_bias(name, layer)))
        elif isinstance(layer, _BIASED) and getattr(layer, "use_bias", False):
            activation = None if layer is final else getattr(layer, "activation", None)
            if activation is not None and activation is not keras.activations.linear:
                raise ValueError(
                    f"layer {name!r} applies the activation {getattr(activation, '__name__', activation)!r} after "
                    "its bias, so the gradient at its output is not the gradient at its bias; give the activation "
                    "its own layer (e.g. keras.layers.ReLU()) to explain this model with FullGrad"
                )
            found.append((name, np.asarray(layer.bias, dtype=np.float32).reshape(-1).copy()))
    return found


def _batch_norm_bias(name: str, bn: keras.layers.BatchNormalization) -> np.ndarray:
    # the probe reads a 4-D output channels last (``channel_axis``), so the bias must run along the last axis
    ndim = getattr(bn.input_spec, "ndim", None)
    axes = [bn.axis] if isinstance(bn.axis, int) else list(bn.axis)
    if len(axes) != 1 or axes[0] not in (-1, None if ndim is None else ndim - 1) or channel_axis(bn) != -1:
        raise ValueError(f"batch norm {name!r} normalizes axis {bn.axis}, not the last (channels-last) axis")
    mean = np.asarray(bn.moving_mean, dtype=np.float64)
    scale = 1.0 / np.sqrt(np.asarray(bn.moving_variance, dtype=np.float64) + bn.epsilon)
    gamma = np.asarray(bn.gamma, dtype=np.float64) if bn.scale else 1.0
    beta = np.asarray(bn.beta, dtype=np.float64) if bn.center else 0.0
    return (beta - gamma * mean * scale).astype(np.float32)


def _make_probe(
    model: keras.Model,
    layers: dict[str, keras.layers.Layer],
    result: dict[str, Any],
    batch: np.ndarray,
    reshape: common.Reshape | None,
) -> Probe:
    """The graph's results for ``layers`` as a channels-first ``Probe``."""
    activations, gradients, read_as = {}, {}, {}
    size, n = _input_size(model, batch), batch.shape[0]
    for (name, layer), a, g in zip(layers.items(), result["activations"], result["gradients"], strict=True):
        native = _native(layer)
        activations[name], read_as[name] = common.read_map(name, a, reshape, native, size, n)
        gradients[name], _ = common.read_map(name, g, reshape, native, size, n)
    return Probe(
        activations=activations,
        gradients=gradients,
        scores=result["scores"],
        targets=result["targets"].astype(np.int64),
        logits=result.get("logits"),
        input_size=size,
        layers=list(layers),
        layouts=read_as,
    )


def _native(layer: keras.layers.Layer) -> str:
    return "NHWC" if channel_axis(layer) == -1 else "NCHW"


def _input_size(model: keras.Model, batch: np.ndarray) -> tuple[int, ...]:
    """The grid of the batch: ``(H, W)`` for images, ``(L,)`` for signals, ``(D, H, W)`` for volumes."""
    grid = batch.shape[1:-1] if input_channel_axis(model) == -1 else batch.shape[2:]
    return tuple(int(v) for v in grid)


def _dependence_score(outputs: Any) -> tf.Tensor:
    """For an output that is not class scores, each image's sum of every output (does a layer matter at all?)."""
    leaves = [tf.cast(t, tf.float32) for t in tf.nest.flatten(outputs) if tf.is_tensor(t)]
    return tf.add_n([tf.reduce_sum(tf.reshape(t, [tf.shape(t)[0], -1]), axis=1) for t in leaves])


def _require_model(model: Any) -> None:
    if not is_model(model):
        raise TypeError(
            f"the tensorflow backend explains a keras.Model, got {type(model).__module__}.{type(model).__qualname__}"
        )


def _model_inputs(model: keras.Model, x: Any) -> tuple[np.ndarray, Any, Any]:
    """``(batch, called, key)``: the explained input as a checked batch, what the model is called with (that batch,
    or the list or dict of all inputs, the others as NumPy) and the explained input's key (``None``: one input)."""
    inputs = multi.read(x)
    batch = _as_batch(model, inputs.explained)
    if len(inputs.parts) == 1 and not inputs.by_name:  # one input, also as a tuple of one
        return batch, batch, None
    return batch, inputs.converted(_other_input).structure(batch), inputs.key


def _other_input(part: Any) -> np.ndarray:
    common.refuse_torch_tensor(part, "Keras", _LAYOUT)
    array = np.asarray(part)
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def _as_batch(model: keras.Model, x: Any) -> np.ndarray:
    grid = _model_grid(model)
    return common.checked_batch(to_numpy(x), common.input_layout(grid, input_channel_axis(model)), grid)


def _model_grid(model: keras.Model) -> int | None:
    """The number of grid axes of the model's declared input (``None`` when it declares none, as a subclassed
    model before its first call): 1 for signals, 2 for images, 3 for volumes."""
    try:
        (declared,) = model.inputs  # several inputs: any grid (the explained one is named by the caller)
        shape = declared.shape
    except (AttributeError, IndexError, TypeError, ValueError):
        return None
    return len(shape) - 2 if 3 <= len(shape) <= 5 else None
