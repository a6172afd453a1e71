"""JAX backend: activations and gradients of a JAX or Flax model as NumPy arrays.

This module keeps the backend contract (``gradcam.backends.contract.Backend``; DESIGN.md sections 5
and 7): it checks the input, resolves layers and targets with ``gradcam.backends.common`` before any
compute, and turns the framework's arrays into the canonical NumPy forms. What only JAX needs lives
beside it, one idea per file:

* ``model``: what a JAX model is (a ``(features, head)`` pair or a Flax module with its variables),
  its forward with a callback at each layer output (Flax ``intercept_methods``, the module never
  changed), and the abstract trace that names the layers and the output shape;
* ``compiled``: the probe as one ``jax.jit`` function (one forward, one ``jax.vjp`` with respect to
  the layer outputs only), compiled once per model structure and input shape;
* ``guided``: Guided Backprop and Deconvnet by evaluating the forward's jaxpr with its ReLUs replaced;
* ``nnx``: Flax ``nnx`` modules, split into structure and state and merged again inside each trace.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradcam.backends import choice, common, layouts
from gradcam.backends import inputs as multi
from gradcam.backends.jax import biases, nnx
from gradcam.backends.jax.compiled import run, trace_count
from gradcam.backends.jax.model import (
    CACHE,
    FEATURES,
    AnyModel,
    FlaxModel,
    JaxModel,
    NnxModel,
    ablated_forward,
    as_model,
    forward,
    looks_like_model,
    resolve_layers,
    resolve_name,
    structure_of,
    trace,
    variable_paths,
    variables_of,
)
from gradcam.backends.probe import InputGradient, Probe

__all__ = [
    "NAME",
    "FEATURES",
    "JaxModel",
    "FlaxModel",
    "NnxModel",
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

NAME = "jax"

LAYOUT = "N, H, W, C"


def is_model(model: Any) -> bool:
    """Whether ``model`` is (or looks meant to be) a JAX model: ``JaxModel``, ``FlaxModel``, ``NnxModel`` or a
    Flax ``nnx.Module``, a pair ``(features, head)`` or ``(module, variables)``, or a bare linen module / jitted
    function (refused later with what to pass instead)."""
    return looks_like_model(model)


def to_numpy(x: Any) -> np.ndarray:
    """The (explained) input batch as float32 NumPy in the model's own layout (NHWC unless ``channel_axis`` says
    otherwise)."""
    x = multi.explained(x)
    common.refuse_torch_tensor(x, "JAX", f"{LAYOUT} by default")
    return np.asarray(x, dtype=np.float32)


def input_channel_axis(model: Any) -> int:
    """The axis of the colour channels in the model's input: its ``channel_axis`` (``-1``, NHWC, by default)."""
    return as_model(model).channel_axis


def layer_names(model: Any) -> list[str]:
    """``["features"]`` for a ``(features, head)`` pair; for Flax, the paths of the modules that own
    variables and their parents, in the variables' order (``layer_shapes`` lists every module in
    execution order, parameter-free ones too, but needs an input)."""
    jm = as_model(model)
    return [FEATURES] if isinstance(jm, JaxModel) else variable_paths(jm)


def layer_shapes(model: Any, x: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Each layer's output shape for input ``x``, in execution order (a trace, nothing computed).

    A module's place in the order is where its ``__call__`` *finished* (a parent comes after its
    children) at its last call; outputs that are not one array are left out.
    """
    jm = as_model(model)
    calls = trace(structure_of(jm), variables_of(jm), _model_inputs(jm, x)[1]).calls
    return [(name, call.shape) for name, call in calls.items() if call.shape is not None]


def explained_model(model: Any, output: Any = None, probability: bool = False) -> tuple[Any, tuple[str, ...]]:
    """The model to explain (a ``JaxModel``, ``FlaxModel`` or ``NnxModel``) and notes about what was done.

    ``output`` selects one output of a dict, tuple or dataclass (a key, an index, a field). A final softmax
    inside a JAX function cannot be taken off; ``probability`` is accepted for the contract and changes nothing.
    """
    jm = as_model(model)
    notes = []
    if isinstance(jm, NnxModel) and jm.module is model:
        notes.append(
            f"explaining the nnx module {type(model).__name__} on a copy made inside each trace; layers are its "
            "attribute paths (e.g. 'blocks/0')"
        )
    if output is not None:
        jm = dataclasses.replace(jm, output=output)
        notes.append(f"explaining the model's output {output!r}")
    return jm, tuple(notes)


def layer_choice(model: Any, x: Any) -> choice.LayerChoice:
    """The automatic layer for inputs shaped like ``x``, by the rule of ``gradcam.backends.choice``.

    A trace (nothing computed) lists the layers; one compiled probe per layer tried says whether the score
    depends on it (usually the last candidate, so one). The whole batch ``x`` is used: the probe compiled for
    the chosen layer is then the very one a method runs on ``x`` (compiling costs more than computing).
    """
    jm = as_model(model)
    sample, called, _ = _model_inputs(jm, x)
    native = _native(jm.channel_axis)
    weighted = set(variable_paths(jm)) if not isinstance(jm, JaxModel) else {FEATURES}
    modules = nnx.module_paths(jm.module) if isinstance(jm, NnxModel) else {}
    infos = [
        choice.LayerInfo(
            name,
            shape,
            native,
            weighted=name in weighted,
            normalization="norm" in name.rsplit("/", 1)[-1].lower()
            or "Norm" in type(modules.get(name)).__name__,
        )
        for name, shape in layer_shapes(jm, x)
    ]

    output_shape = trace(structure_of(jm), variables_of(jm), called).output_shape

    def depends(name: str) -> bool:
        # the default target (top-1 class) for class scores, so that the compiled probe is the one a method reuses
        target = None if output_shape is not None and len(output_shape) == 2 else _dependence_score
        try:
            found = probe(jm, x, name, target=target)
        except common.ScoreIndependentError:
            return False
        return bool(np.any(found.gradients[name] != 0))

    size = _spatial_size(sample.shape, jm.channel_axis)
    return choice.choose(infos, size, sample.shape[0], depends, output_shape)


def default_layer(model: Any, x: Any) -> str:
    """The automatic layer for inputs shaped like ``x``: ``layer_choice(model, x).name``."""
    return layer_choice(model, x).name


def predict(model: Any, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` as float32 NumPy, forward only, jit-compiled.

    ``batch_size`` splits the batch into chunks of that many images; a shorter last chunk is padded
    to full size (and the padding dropped) so that one compiled shape serves every chunk.
    """
    jm = as_model(model)
    _, called, _ = _model_inputs(jm, x)
    structure, variables = structure_of(jm), variables_of(jm)
    compiled = CACHE.get(("predict", structure), lambda: jax.jit(lambda v, xb: forward(structure, v, xb)))

    def run_chunk(chunk: Any) -> jax.Array:
        out = compiled(variables, chunk)
        if not isinstance(out, jax.Array):
            raise TypeError(
                f"the model returned a {type(out).__name__}, not an array; predict needs a model whose "
                "output is one array"
            )
        return out

    return common.predict_in_chunks(run_chunk, called, batch_size, pad=True)


def probe(
    model: Any,
    x: Any,
    layers: Any,
    target: common.Target = None,
    reshape: common.Reshape | None = None,
    at: str = "output",
) -> Probe:
    """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one ``jax.vjp``, jitted.

    Parameters
    ----------
    model
        ``JaxModel`` / ``(features, head)``, or ``FlaxModel`` / ``(module, variables)``.
    x
        A NumPy or JAX batch in the model's layout (NHWC by default). A model with several inputs takes a list
        (``apply(variables, *x)``), a dict (``apply(variables, **x)``) or a ``gradcam.backends.inputs.Inputs``
        naming the explained one, whose grid the maps have.
    layers
        ``"features"`` for a pair; for Flax a module path (``"backbone/layer4"``) or a module name
        unique in the model (``"layer4"``), or a non-empty list of them (``default_layer`` gives the default).
    target
        ``None`` (top-1 class per image), an int, one int per image, or a callable
        ``f(outputs) -> (N,)`` written in ``jax.numpy``. The gradient is that of ``sum_n y_n``.
    reshape
        How each layer's output is read as ``(N, K, h, w)``: a layout name (``"NHWC"``, ``"NTC:1"``;
        ``gradcam.backends.layouts``), a function on the NumPy array (a 4-D map given to it channels first), or
        ``None`` to infer the layout from the output's shape.
    at
        ``"output"`` (the papers' ``A``) or ``"input"``: each layer's input (a Flax linen module's first argument)
        and the gradient at it, read by ``reshape`` as outputs are.

    Raises
    ------
    ValueError
        No layer, bad input, or a target of the wrong type, count or range (checked before the probe runs).
    KeyError
        An unknown or ambiguous layer name (naming the closest ones).
    """
    jm = as_model(model)
    batch, called, key = _model_inputs(jm, x)
    specs = common.required_layers(layers)
    names = resolve_layers(jm, called, specs)
    result = run(jm, called, names, "plain", False, target, key, at)
    try:
        return _make_probe(jm, names, result, batch, reshape)
    except layouts.LayoutError as error:
        raise common.with_better_layer(error, lambda: default_layer(jm, x)) from None


def input_gradient(
    model: Any,
    x: Any,
    target: common.Target = None,
    rule: str = "plain",
    layers: Any = None,
    reshape: common.Reshape | None = None,
) -> InputGradient:
    """``d y / d x`` as ``(N, C, *grid)`` float32 (``(N, C, H, W)`` for images), with the ReLU backward given by
    ``rule``; with several inputs (``probe``'s ``x``), with respect to the explained one only.

    ``rule``: ``"plain"``; ``"guided"`` (Guided Backprop: a ReLU passes the gradient only where its
    input > 0 AND the incoming gradient > 0); ``"deconvnet"`` (only where the incoming gradient > 0).
    The rules act on every ``jax.nn.relu`` (``flax.linen.relu`` is the same function) and every
    ``jnp.maximum(x, 0)`` of the forward; ``result.relu_count`` says how many (0: the gradient is the plain
    one). With ``layers``, the same call also returns those layers' activations and *plain* gradients in
    ``result.probe``.
    """
    common.check_rule(rule)
    jm = as_model(model)
    batch, called, key = _model_inputs(jm, x)
    names = resolve_layers(jm, called, common.layer_list(layers))
    result = run(jm, called, names, rule, True, target, key)
    return InputGradient(
        gradient=common.channels_first(result["input_gradient"], jm.channel_axis),
        scores=result["scores"],
        targets=result["targets"].astype(np.int64),
        logits=result.get("logits"),
        probe=_make_probe(jm, names, result, batch, reshape) if names else None,
        relu_count=int(result["relu_count"]),
    )


def predict_ablated(model: Any, x: Any, layer: Any, channels: Any, reshape: common.Reshape | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` with channel ``channels[n]`` of ``layer``'s output set to zero
    for image ``n`` (``-1``: nothing zeroed), forward only, jitted; the model is not changed.

    Channels count as in the probe's ``(N, K, h, w)`` arrays: the output is read with the layout ``reshape``
    names (``None``: inferred), so tokens lose a channel at every patch token (special tokens keep theirs). A
    layer that runs more than once in one forward is refused: which of its calls to ablate would be a guess.
    """
    jm = as_model(model)
    batch, called, _ = _model_inputs(jm, x)
    (name,) = resolve_layers(jm, called, [layer])
    structure = structure_of(jm)
    call = trace(structure, variables_of(jm), called).calls[name]
    if call.count > 1:
        raise common.ambiguous_ablation(name)
    size = _spatial_size(batch.shape, jm.channel_axis)
    axis, first = common.ablation_axis(name, call.shape, reshape, _native(jm.channel_axis), size, batch.shape[0])
    chosen = np.asarray(channels, dtype=np.int32).reshape(-1)
    if chosen.shape != (batch.shape[0],):
        raise ValueError(f"got {chosen.size} channels for a batch of {batch.shape[0]} images; give one per image")
    compiled = CACHE.get(
        ("ablated", structure, name, axis, first), lambda: jax.jit(ablated_forward(structure, name, axis, first))
    )
    return np.asarray(compiled(variables_of(jm), called, chosen), dtype=np.float32)


def dense_weight(model: Any, layer: Any) -> np.ndarray:
    """The ``(classes, inputs)`` weight matrix of a Flax ``Dense`` layer (Flax stores its transpose)."""
    jm = as_model(model)
    if isinstance(jm, JaxModel):
        raise TypeError(
            "a (features, head) pair has no named dense layer; use a FlaxModel, or GradCAM, which equals "
            "CAM on a global-average-pooling + dense head"
        )
    name = resolve_name(variable_paths(jm), layer)
    if isinstance(jm, NnxModel):
        kernel = getattr(nnx.module_paths(jm.module)[name], "kernel", None)
        kernel = None if kernel is None else kernel.value
    else:
        node: Any = jm.variables.get("params", {})
        for part in name.split("/"):
            node = node.get(part, {}) if isinstance(node, Mapping) else {}
        kernel = node.get("kernel") if isinstance(node, Mapping) else None
    if kernel is None or np.ndim(kernel) != 2:
        raise ValueError(f"layer {name!r} has no 2-D 'kernel' parameter; it is not a Dense layer")
    return np.asarray(kernel, dtype=np.float32).T.copy()


def layer_biases(model: Any, x: Any) -> list[tuple[str, np.ndarray]]:
    """``(path, bias (C,) float32)`` of every Flax ``Conv``, ``ConvTranspose``, ``Dense`` (nnx: ``Linear``) and
    ``BatchNorm`` layer with a bias; a ``linen`` module is run abstractly on ``x`` to find them (``biases``).

    Batch norm with running averages computes ``scale (x - mean) / sqrt(var + epsilon) + bias``: a linear map plus
    the bias ``bias - scale * mean / sqrt(var + epsilon)``. One that uses the batch's statistics
    (``use_running_average=False``) has no fixed bias and is refused, as is a ``(features, head)`` pair, whose
    layers are hidden inside functions.
    """
    jm = as_model(model)
    return biases.layer_biases(jm, _model_inputs(jm, x)[1])


def _trace_count(model: Any) -> int:
    """How many times the probes compiled for ``model`` have been traced (for tests)."""
    return trace_count(structure_of(as_model(model)))


def _model_inputs(jm: AnyModel, x: Any) -> tuple[np.ndarray, Any, Any]:
    """``(batch, called, key)``: the explained input as a checked batch, what the model is called with (that batch,
    or the list or dict of all inputs, the others as NumPy) and the explained input's key (``None``: one input)."""
    inputs = multi.read(x)
    batch = _as_batch(jm, inputs.explained)
    if len(inputs.parts) == 1 and not inputs.by_name:  # one input, also as a tuple of one
        return batch, batch, None
    return batch, inputs.converted(_other_input).structure(batch), inputs.key


def _other_input(part: Any) -> np.ndarray:
    common.refuse_torch_tensor(part, "JAX", f"{LAYOUT} by default")
    array = np.asarray(part)
    return array.astype(np.float32) if np.issubdtype(array.dtype, np.floating) else array


def _as_batch(jm: AnyModel, x: Any) -> np.ndarray:
    grid = _model_grid(jm)
    return common.checked_batch(to_numpy(x), common.input_layout(grid, jm.channel_axis), grid)


def _model_grid(jm: AnyModel) -> int | None:
    """The number of grid axes of the model's input, read from its first convolution kernel (a variable
    ``kernel`` of 3 to 5 dimensions under a module named like a convolution: ``(*window, C_in, C_out)``);
    ``None`` when there is none (functions, or modules named otherwise): any grid of 1 to 3 axes is taken.

    The name is asked for because attention's ``DenseGeneral`` kernels have 3 dimensions too."""
    variables = variables_of(jm)
    if variables is None:
        return None
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        where = jax.tree_util.keystr(path).lower()
        if "conv" in where and where.endswith("['kernel']") and 3 <= np.ndim(leaf) <= 5:
            return np.ndim(leaf) - 2
    return None


def _make_probe(
    jm: AnyModel,
    names: list[str],
    result: dict[str, Any],
    batch: np.ndarray,
    reshape: common.Reshape | None,
) -> Probe:
    """The compiled probe's results in the canonical forms: ``(N, K, h, w)`` maps by layer name."""
    native, size, n = _native(jm.channel_axis), _spatial_size(batch.shape, jm.channel_axis), batch.shape[0]
    activations, gradients, read_as = {}, {}, {}
    for name, a, g in zip(names, result["activations"], result["gradients"], strict=True):
        activations[name], read_as[name] = common.read_map(name, a, reshape, native, size, n)
        gradients[name], _ = common.read_map(name, g, reshape, native, size, n)
    return Probe(
        activations=activations,
        gradients=gradients,
        scores=result["scores"].astype(np.float32),
        targets=result["targets"].astype(np.int64),
        logits=result.get("logits"),
        input_size=size,
        layers=list(names),
        layouts=read_as,
    )


def _native(channel_axis: int) -> str:
    return "NCHW" if channel_axis == 1 else "NHWC"


def _dependence_score(outputs: Any) -> jax.Array:
    """For an output that is not class scores, each image's sum of every output (does a layer matter at all?)."""
    leaves = jax.tree_util.tree_leaves(outputs)
    return sum(jnp.reshape(leaf, (leaf.shape[0], -1)).sum(axis=1).astype(jnp.float32) for leaf in leaves)


def _spatial_axes(ndim: int, channel_axis: int) -> list[int]:
    channel = channel_axis % ndim
    return [axis for axis in range(1, ndim) if axis != channel]


def _spatial_size(shape: tuple[int, ...], channel_axis: int) -> tuple[int, ...]:
    return tuple(int(shape[axis]) for axis in _spatial_axes(len(shape), channel_axis))
