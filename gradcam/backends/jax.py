"""JAX backend: activations and gradients of a JAX or Flax model as NumPy arrays.

Why it is built this way (DESIGN.md sections 5 and 7):

* A JAX model is a function, so it has no layers to name unless it says where they are. Two kinds
  do: a pair of pure functions ``(features, head)`` with ``head(features(x))`` the outputs (the
  layer is the output of ``features``, named ``"features"``), and a Flax ``linen`` module with its
  variables, whose layers are module paths (``"backbone/layer4"``). ``JaxModel`` and
  ``FlaxModel`` hold them with their channel axis; plain tuples are the shorthand for NHWC.
* A Flax module is never changed. ``flax.linen.intercept_methods`` sees every submodule's
  ``__call__`` during one trace; at a requested layer it keeps the output ``A`` and hands on
  ``A + eps`` with ``eps = 0``, so ``d y / d eps`` is exactly ``d y / d A``. The gradients come from
  one ``jax.vjp`` with respect to those ``eps`` only: never the variables, never the input.
* The whole probe is one ``jax.jit`` function, built once per (model structure, layers, rule,
  target kind) and kept in a bounded cache; the variables are an argument, not a constant, and JAX
  compiles again only for a new input shape. Its cost is therefore that of the jitted forward.
* Guided Backprop and Deconvnet need no change to the model either: the forward is traced to a
  jaxpr and evaluated again with every ``jax.nn.relu`` (and every ``max(x, 0)``) replaced by a
  ``jax.custom_vjp`` ReLU with the rule's backward. Calls into ``jit`` and ``remat`` are inlined to
  reach their ReLUs; a ReLU inside a loop or a branch (``nn.scan``, ``lax.cond``) is refused with
  an error rather than silently left plain.
* A layer called more than once in one forward is taken at its **last** call, as in the torch backend.
"""
from __future__ import annotations

import collections
import sys
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from gradcam.backends import common
from gradcam.backends.probe import InputGradient, Probe

__all__ = [
    "JaxModel",
    "FlaxModel",
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

FEATURES = "features"

# compiled probes and traced layer lists kept at once; the least recently used goes first
_CACHE_SIZE = 64


@dataclass(frozen=True)
class JaxModel:
    """A JAX model split at its feature layer: the outputs are ``head(features(x))``.

    Parameters
    ----------
    features, head
        Pure functions of JAX arrays (parameters closed over or bound with ``functools.partial``).
        The layer they meet at is called ``"features"``.
    channel_axis
        Axis of the channels in ``x`` and in the features (``-1``: NHWC, as Flax; ``1``: NCHW).
    """

    features: Callable[[Any], Any]
    head: Callable[[Any], Any]
    channel_axis: int = -1


@dataclass(frozen=True)
class FlaxModel:
    """A Flax ``linen`` module with its variables; layers are module paths such as ``"backbone/layer4"``.

    Parameters
    ----------
    module, variables
        What ``module.apply(variables, x)`` takes.
    channel_axis
        Axis of the channels in ``x`` and in the layer outputs (``-1``: NHWC, Flax's own layout).
    method
        The module method to apply (``None``: ``__call__``).
    apply_kwargs
        Static keyword arguments of every ``apply`` (e.g. ``{"train": False}``); hashable values.
    """

    module: Any
    variables: Mapping[str, Any]
    channel_axis: int = -1
    method: str | Callable[..., Any] | None = None
    apply_kwargs: Mapping[str, Hashable] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class _Structure:
    """What a compiled function closes over: the model without its variables.

    It is the cache key, so it hashes and compares by value where it can: a fresh ``(module,
    variables)`` tuple per call then finds the probe compiled for an equal module. A module with
    unhashable attributes (a list field) is keyed by identity instead.
    """

    kind: str  # "pair" | "flax"
    features: Any = None
    head: Any = None
    module: Any = None
    method: Any = None
    apply_kwargs: tuple[tuple[str, Hashable], ...] = ()

    def __post_init__(self) -> None:
        module_key: Any = self.module
        try:
            hash(module_key)
        except TypeError:
            module_key = _Identity(self.module)
        key = (self.kind, self.features, self.head, module_key, self.method, self.apply_kwargs)
        object.__setattr__(self, "_key", key)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Structure) and self._key == other._key


class _Identity:
    """Hashes and compares by identity (and keeps its object alive, so that no other takes its id)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


class _Call(NamedTuple):
    """How often a layer ran in one forward, and its output's shape and dtype (None: not one array)."""

    count: int
    shape: tuple[int, ...] | None
    dtype: Any


def is_model(model: Any) -> bool:
    """Whether ``model`` is (or looks meant to be) a JAX model: ``JaxModel``, ``FlaxModel``, a pair
    ``(features, head)`` or ``(module, variables)``, or a bare Flax module / jitted function (refused
    later with what to pass instead)."""
    return isinstance(model, (JaxModel, FlaxModel)) or _is_pair(model) or _is_bare(model)


def to_numpy(x: Any) -> np.ndarray:
    """The input batch as float32 NumPy in the model's own layout (NHWC unless ``channel_axis`` says otherwise)."""
    if type(x).__module__.split(".")[0] == "torch":
        raise TypeError(
            "a torch tensor was given to a JAX model; pass a NumPy or JAX array in the JAX model's own "
            "layout (N, H, W, C by default), e.g. x.permute(0, 2, 3, 1).numpy() for an NCHW torch batch"
        )
    return np.asarray(x, dtype=np.float32)


def layer_names(model: Any) -> list[str]:
    """``["features"]`` for a ``(features, head)`` pair; for Flax, the paths of the modules that own
    variables and their parents, in the variables' order (``layer_shapes`` lists every module in
    execution order, parameter-free ones too, but needs an input)."""
    jm = _as_model(model)
    if isinstance(jm, JaxModel):
        return [FEATURES]
    names: dict[str, None] = {}

    def visit(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                names.setdefault(prefix + key, None)
                visit(value, prefix + key + "/")

    for collection in jm.variables.values():
        visit(collection, "")
    return list(names)


def layer_shapes(model: Any, x: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Each layer's output shape for input ``x``, in execution order (a trace, nothing computed).

    A module's place in the order is where its ``__call__`` *finished* (a parent comes after its
    children) at its last call; outputs that are not one array are left out.
    """
    jm = _as_model(model)
    batch = _as_batch(x)
    calls = _layer_calls(_structure(jm), _variables(jm), batch)
    return [(name, call.shape) for name, call in calls.items() if call.shape is not None]


def default_layer(model: Any, x: Any) -> str:
    """The last layer, in execution order, whose output is a spatial map (h, w > 1)."""
    jm = _as_model(model)
    batch = _as_batch(x)
    spatial = [name for name, shape in layer_shapes(jm, batch[:1]) if _is_spatial(shape, jm.channel_axis)]
    if not spatial:
        raise ValueError(
            "no layer of this model outputs a spatial map with h, w > 1; pass layers= explicitly, "
            "with reshape= for token layers (gradcam.vit_reshape)"
        )
    return spatial[-1]


def predict(model: Any, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` as float32 NumPy, forward only, jit-compiled.

    ``batch_size`` splits the batch into chunks of that many images; a shorter last chunk is padded
    to full size (and the padding dropped) so that one compiled shape serves every chunk.
    """
    jm = _as_model(model)
    batch = _as_batch(x)
    structure = _structure(jm)
    forward = _cached(("predict", structure), lambda: jax.jit(lambda v, xb: _forward(structure, v, xb)))
    n = batch.shape[0]
    size = n if batch_size is None else _positive(batch_size, "batch_size")
    outputs = []
    for start in range(0, n, size):
        chunk = batch[start : start + size]
        padded = _pad_batch(chunk, size) if n > size else chunk
        out = forward(_variables(jm), padded)
        if not isinstance(out, jax.Array):
            raise TypeError(
                f"the model returned a {type(out).__name__}, not an array; predict needs a model whose "
                "output is one array"
            )
        outputs.append(np.asarray(out, dtype=np.float32)[: len(chunk)])
    return np.concatenate(outputs, axis=0)


def probe(
    model: Any,
    x: Any,
    layers: Any = None,
    target: common.Target = None,
    reshape: Reshape | None = None,
) -> Probe:
    """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one ``jax.vjp``, jitted.

    Parameters
    ----------
    model
        ``JaxModel`` / ``(features, head)``, or ``FlaxModel`` / ``(module, variables)``.
    x
        A NumPy or JAX batch in the model's layout (NHWC by default).
    layers
        ``None`` (the default layer), ``"features"`` for a pair; for Flax a module path
        (``"backbone/layer4"``) or a module name unique in the model (``"layer4"``), or a list.
    target
        ``None`` (top-1 class per image), an int, one int per image, or a callable
        ``f(outputs) -> (N,)`` written in ``jax.numpy``. The gradient is that of ``sum_n y_n``.
    reshape
        Applied to each layer's activations and gradients (as NumPy, after moving 4-D channels to
        axis 1) to get ``(N, K, h, w)``, e.g. ``gradcam.vit_reshape`` for ViT tokens.
    """
    jm = _as_model(model)
    batch = _as_batch(x)
    specs = common.layer_list(layers) or [default_layer(jm, batch)]
    names = _resolve_layers(jm, batch, specs)
    result = _run(jm, batch, names, "plain", False, target)
    return _make_probe(jm, names, result, target, batch, reshape)


def input_gradient(
    model: Any,
    x: Any,
    target: common.Target = None,
    rule: str = "plain",
    layers: Any = None,
    reshape: Reshape | None = None,
) -> InputGradient:
    """``d y / d x`` as ``(N, C, H, W)`` float32, with the ReLU backward given by ``rule``.

    ``rule``: ``"plain"``; ``"guided"`` (Guided Backprop: a ReLU passes the gradient only where its
    input > 0 AND the incoming gradient > 0); ``"deconvnet"`` (only where the incoming gradient > 0).
    The rules act on every ``jax.nn.relu`` (``flax.linen.relu`` is the same function) and every
    ``jnp.maximum(x, 0)`` of the forward; a model without any is refused. With ``layers``, the same
    call also returns those layers' activations and *plain* gradients in ``result.probe``.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    jm = _as_model(model)
    batch = _as_batch(x)
    names = _resolve_layers(jm, batch, common.layer_list(layers))
    result = _run(jm, batch, names, rule, True, target)
    layer_probe = _make_probe(jm, names, result, target, batch, reshape) if names else None
    return InputGradient(
        gradient=_channels_first(result["input_gradient"], jm.channel_axis),
        scores=result["scores"],
        targets=_targets(target, result),
        logits=result.get("logits"),
        probe=layer_probe,
    )


def predict_ablated(model: Any, x: Any, layer: Any, channels: Any) -> np.ndarray:
    """The model's outputs ``(N, ...)`` with channel ``channels[n]`` of ``layer``'s output set to zero
    for image ``n`` (``-1``: nothing zeroed), forward only, jitted; the model is not changed.

    Channels count as in the probe's ``(N, K, h, w)`` arrays. A layer that runs more than once in
    one forward is refused: which of its calls to ablate would be a guess.
    """
    jm = _as_model(model)
    batch = _as_batch(x)
    (name,) = _resolve_layers(jm, batch, [layer])
    call = _layer_calls(_structure(jm), _variables(jm), batch)[name]
    if call.count != 1:
        raise ValueError(
            f"layer {name!r} runs {call.count} times in one forward; ablating one of its calls would be a guess, "
            "choose a layer that runs once"
        )
    if len(call.shape) != 4:
        raise ValueError(f"layer {name!r} outputs shape {call.shape}, not a 4-D map; it cannot be ablated by channel")
    chosen = np.asarray(channels, dtype=np.int32).reshape(-1)
    if chosen.shape != (batch.shape[0],):
        raise ValueError(f"got {chosen.size} channels for a batch of {batch.shape[0]} images; give one per image")
    structure, axis = _structure(jm), jm.channel_axis
    forward = _cached(("ablated", structure, name, axis), lambda: jax.jit(_ablated_forward(structure, name, axis)))
    return np.asarray(forward(_variables(jm), batch, chosen), dtype=np.float32)


def dense_weight(model: Any, layer: Any) -> np.ndarray:
    """The ``(classes, inputs)`` weight matrix of a Flax ``Dense`` layer (Flax stores its transpose)."""
    jm = _as_model(model)
    if isinstance(jm, JaxModel):
        raise TypeError(
            "a (features, head) pair has no named dense layer; use a FlaxModel, or GradCAM, which equals "
            "CAM on a global-average-pooling + dense head"
        )
    params = jm.variables.get("params", {})
    names = layer_names(jm)
    name = _resolve_layer(names, layer)
    node: Any = params
    for part in name.split("/"):
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
    kernel = node.get("kernel") if isinstance(node, Mapping) else None
    if kernel is None or np.ndim(kernel) != 2:
        raise ValueError(f"layer {name!r} has no 2-D 'kernel' parameter; it is not a Dense layer")
    return np.asarray(kernel, dtype=np.float32).T.copy()


# --- the model as functions --------------------------------------------------------------------


def _as_model(model: Any) -> JaxModel | FlaxModel:
    """``model`` as a ``JaxModel`` or ``FlaxModel``; what cannot be split at a layer is refused."""
    if isinstance(model, (JaxModel, FlaxModel)):
        return model
    if _is_pair(model):
        first, second = model
        return FlaxModel(first, second) if _is_flax_module(first) else JaxModel(first, second)
    if _is_bare(model):
        raise TypeError(
            "this JAX model does not say where its layers are: pass (features, head), two functions with "
            "head(features(x)) the outputs (or gradcam.backends.jax.JaxModel), or a Flax module with its "
            "variables as (module, variables) (or gradcam.backends.jax.FlaxModel)"
        )
    raise TypeError(
        f"the jax backend explains a (features, head) pair or a Flax (module, variables) pair, "
        f"got {type(model).__module__}.{type(model).__qualname__}"
    )


def _is_pair(model: Any) -> bool:
    if not isinstance(model, tuple) or len(model) != 2:
        return False
    first, second = model
    if _is_flax_module(first):
        return isinstance(second, Mapping)
    return callable(first) and callable(second)


def _is_bare(model: Any) -> bool:
    return _is_flax_module(model) or (callable(model) and type(model).__module__.split(".")[0] in ("jax", "jaxlib"))


def _is_flax_module(obj: Any) -> bool:
    # a linen module can only exist if flax.linen was imported; nothing is imported to find out
    linen = sys.modules.get("flax.linen")
    return linen is not None and isinstance(obj, linen.Module)


def _structure(jm: JaxModel | FlaxModel) -> _Structure:
    if isinstance(jm, JaxModel):
        return _Structure("pair", features=jm.features, head=jm.head)
    kwargs = tuple(sorted(jm.apply_kwargs.items()))
    try:
        hash(kwargs)
    except TypeError:
        raise TypeError(
            "FlaxModel.apply_kwargs must hold static, hashable values (flags such as train=False); "
            "pass arrays through the variables"
        ) from None
    return _Structure("flax", module=jm.module, method=jm.method, apply_kwargs=kwargs)


def _variables(jm: JaxModel | FlaxModel) -> Any:
    return jm.variables if isinstance(jm, FlaxModel) else None


OnOutput = Callable[[str, int, Any], Any]


def _forward(structure: _Structure, variables: Any, x: Any, on_output: OnOutput | None = None) -> Any:
    """The model's outputs; each layer output passes through ``on_output(name, call_index, output)``."""
    if structure.kind == "pair":
        features = structure.features(x)
        if on_output is not None:
            features = on_output(FEATURES, 0, features)
        return structure.head(features)
    import flax.linen as nn

    kwargs = dict(structure.apply_kwargs)
    if on_output is None:
        return structure.module.apply(variables, x, method=structure.method, **kwargs)
    calls: collections.Counter[str] = collections.Counter()

    def interceptor(next_fun: Callable[..., Any], args: Any, kw: Any, context: Any) -> Any:
        output = next_fun(*args, **kw)
        path = context.module.path
        if context.method_name != "__call__" or not path:
            return output
        name = "/".join(path)
        calls[name] += 1
        return on_output(name, calls[name] - 1, output)

    with nn.intercept_methods(interceptor):
        return structure.module.apply(variables, x, method=structure.method, **kwargs)


def _ablated_forward(structure: _Structure, name: str, channel_axis: int) -> Callable[..., Any]:
    """``(variables, x, channels) -> outputs`` with channel ``channels[n]`` of layer ``name`` zeroed in image ``n``."""

    def forward(variables: Any, x: jax.Array, channels: jax.Array) -> Any:
        def ablate(layer: str, index: int, output: Any) -> Any:
            if layer != name:
                return output
            keep = 1 - jax.nn.one_hot(channels, output.shape[channel_axis], dtype=output.dtype)
            return output * jnp.moveaxis(keep[:, None, None, :], -1, channel_axis)

        return _forward(structure, variables, x, ablate)

    return forward


def _layer_calls(structure: _Structure, variables: Any, x: Any) -> dict[str, _Call]:
    """``name -> _Call`` for every layer with one array output, in execution order (cached per input shape)."""
    key = ("calls", structure, tuple(x.shape), str(x.dtype))
    return _cached(key, lambda: _trace_layer_calls(structure, variables, x))


def _trace_layer_calls(structure: _Structure, variables: Any, x: Any) -> dict[str, _Call]:
    calls: dict[str, _Call] = {}

    def record(name: str, index: int, output: Any) -> Any:
        calls.pop(name, None)
        if isinstance(output, jax.ShapeDtypeStruct) or hasattr(output, "aval"):
            calls[name] = _Call(index + 1, tuple(int(d) for d in output.shape), output.dtype)
        else:
            calls[name] = _Call(index + 1, None, None)
        return output

    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), (variables, x))
    jax.eval_shape(lambda v, xb: _forward(structure, v, xb, record), *abstract)
    return calls


def _resolve_layers(jm: JaxModel | FlaxModel, batch: np.ndarray, specs: list[Any]) -> list[str]:
    """Canonical names of the requested layers, in the order given, without repeats."""
    if not specs:
        return []
    calls = _layer_calls(_structure(jm), _variables(jm), batch)
    resolved: dict[str, None] = {}
    for spec in specs:
        name = _resolve_layer(list(calls), spec)
        if calls[name].shape is None:
            raise TypeError(f"layer {name!r} does not return one array; choose a module whose output is one array")
        resolved.setdefault(name, None)
    return list(resolved)


def _resolve_layer(names: list[str], spec: Any) -> str:
    if not isinstance(spec, str):
        raise TypeError(f"a JAX layer is a name or a module path such as 'backbone/layer4', got {type(spec).__name__}")
    if spec in names:
        return spec
    nested = [name for name in names if name.endswith("/" + spec)]
    if len(nested) == 1:
        return nested[0]
    if nested:
        raise KeyError(f"layer name {spec!r} is ambiguous; give the full path, one of: {', '.join(nested)}")
    raise common.unknown_layer_error(spec, names)


# --- the compiled probe ------------------------------------------------------------------------


def _run(
    jm: JaxModel | FlaxModel,
    batch: np.ndarray,
    names: list[str],
    rule: str,
    with_input_gradient: bool,
    target: common.Target,
) -> dict[str, Any]:
    """Run the cached jitted probe on ``batch``; results as NumPy."""
    structure = _structure(jm)
    target_fn = target if callable(target) else None
    key = ("probe", structure, tuple(names), rule, with_input_gradient, target_fn)
    fn = _cached(key, lambda: jax.jit(_Probe(key, structure, tuple(names), rule, with_input_gradient, target_fn)))
    classes = _requested_classes(target, batch.shape[0])
    outputs = fn(_variables(jm), batch, classes)
    return jax.tree_util.tree_map(np.asarray, outputs)


class _Probe:
    """The traced probe: ``(variables, x, classes) -> dict`` of activations, gradients, scores, targets,
    logits (and the input gradient); ``classes`` holds one class per image, -1 for the top-1 class."""

    def __init__(
        self,
        key: tuple[Any, ...],
        structure: _Structure,
        names: tuple[str, ...],
        rule: str,
        with_input_gradient: bool,
        target_fn: Callable[[Any], Any] | None,
    ) -> None:
        self.key = key
        self.structure = structure
        self.names = names
        self.rule = rule
        self.with_input_gradient = with_input_gradient
        self.target_fn = target_fn

    def __call__(self, variables: Any, x: jax.Array, classes: jax.Array) -> dict[str, Any]:
        _TRACES[self.key] += 1
        calls = _layer_calls(self.structure, variables, x)
        zeros = {name: jnp.zeros(calls[name].shape, calls[name].dtype) for name in self.names}

        def tapped(x: jax.Array, eps: dict[str, jax.Array]) -> tuple[jax.Array, tuple[Any, ...]]:
            return self._tapped_total(variables, classes, calls, x, eps)

        one = jnp.ones((), jnp.float32)
        input_grad = None
        if not self.with_input_gradient:
            _, backward, (outputs, scores, targets, captured) = jax.vjp(
                lambda eps: tapped(x, eps), zeros, has_aux=True
            )
            (layer_grads,) = backward(one)
        elif self.rule == "plain":
            _, backward, (outputs, scores, targets, captured) = jax.vjp(tapped, x, zeros, has_aux=True)
            input_grad, layer_grads = backward(one)
        else:
            # the rule's backward reaches the input; the layers' gradients stay plain (Guided Grad-CAM)
            _, backward, (outputs, scores, targets) = jax.vjp(
                lambda x: self._rectified_total(variables, classes, x), x, has_aux=True
            )
            (input_grad,) = backward(one)
            captured, layer_grads = {}, {}
            if self.names:
                _, backward, (_, _, _, captured) = jax.vjp(lambda eps: tapped(x, eps), zeros, has_aux=True)
                (layer_grads,) = backward(one)
        result = {
            "scores": scores,
            "targets": targets,
            "activations": tuple(captured[name].astype(jnp.float32) for name in self.names),
            "gradients": tuple(layer_grads[name].astype(jnp.float32) for name in self.names),
        }
        if isinstance(outputs, jax.Array) and outputs.ndim == 2:
            result["logits"] = outputs.astype(jnp.float32)
        if input_grad is not None:
            result["input_gradient"] = input_grad.astype(jnp.float32)
        return result

    def _tapped_total(
        self, variables: Any, classes: jax.Array, calls: dict[str, _Call], x: jax.Array, eps: dict[str, jax.Array]
    ) -> tuple[jax.Array, tuple[Any, ...]]:
        """``sum_n y_n`` with ``eps[name]`` added to each requested layer's output; the outputs, scores,
        targets and the layers' outputs ride along."""
        captured: dict[str, jax.Array] = {}

        def tap(name: str, index: int, output: Any) -> Any:
            # only the last call of a layer is the one explained; earlier calls pass unchanged
            if name not in eps or index != calls[name].count - 1:
                return output
            captured[name] = output
            return output + eps[name]

        outputs = _forward(self.structure, variables, x, tap)
        scores, targets = _target_scores(outputs, classes, self.target_fn)
        return jnp.sum(scores), (outputs, scores, targets, captured)

    def _rectified_total(self, variables: Any, classes: jax.Array, x: jax.Array) -> tuple[jax.Array, tuple[Any, ...]]:
        outputs = _rectified_forward(self.structure, variables, x, self.rule)
        scores, targets = _target_scores(outputs, classes, self.target_fn)
        return jnp.sum(scores), (outputs, scores, targets)


def _target_scores(
    outputs: Any, classes: jax.Array, target_fn: Callable[[Any], Any] | None
) -> tuple[jax.Array, jax.Array]:
    """``(scores (N,), targets (N,))``; ``classes`` holds -1 where the top-1 class is wanted.

    An out-of-range class is clipped into range here (JAX would clamp the gather silently anyway);
    the range is checked against the logits afterwards, with the shared message.
    """
    n = classes.shape[0]
    if target_fn is not None:
        scores = target_fn(outputs)
        if not hasattr(scores, "shape") or tuple(scores.shape) != (n,):
            shape = tuple(scores.shape) if hasattr(scores, "shape") else type(scores).__name__
            raise ValueError(
                f"the target function must return an array of shape ({n},), one score per image; got {shape}"
            )
        return jnp.asarray(scores, jnp.float32), jnp.full((n,), -1, jnp.int32)
    if not isinstance(outputs, jax.Array) or outputs.ndim != 2:
        shape = tuple(outputs.shape) if hasattr(outputs, "shape") else type(outputs).__name__
        raise ValueError(
            f"the model's output has shape {shape}, not (N, classes); "
            "give target= a callable that maps the output to one score per image"
        )
    logits = outputs.astype(jnp.float32)
    top1 = jnp.argmax(logits, axis=1).astype(jnp.int32)
    targets = jnp.where(classes < 0, top1, jnp.minimum(classes, logits.shape[1] - 1))
    return jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0], targets


def _requested_classes(target: common.Target, n: int) -> np.ndarray:
    """One class index per image for the compiled probe (-1: top-1); counts and types checked first."""
    if target is None or callable(target):
        return np.full(n, -1, dtype=np.int32)
    classes = np.asarray(target)
    if classes.dtype.kind not in "iu":
        raise ValueError(f"class targets must be integers, got {target!r}")
    if classes.ndim == 0:
        classes = np.full(n, int(classes))
    if classes.shape != (n,):
        raise ValueError(f"got {classes.size} targets for a batch of {n} images; give one int or {n}")
    # out of int32 range is out of any class range; clip so the cast cannot wrap into a valid class
    return np.clip(classes, -1, np.iinfo(np.int32).max).astype(np.int32)


def _targets(target: common.Target, result: dict[str, Any]) -> np.ndarray:
    """The targets the probe used, with class indices checked against the logits (shared message)."""
    if target is None or callable(target):
        return result["targets"].astype(np.int64)
    return common.class_targets(target, result["logits"])


def _make_probe(
    jm: JaxModel | FlaxModel,
    names: list[str],
    result: dict[str, Any],
    target: common.Target,
    batch: np.ndarray,
    reshape: Reshape | None,
) -> Probe:
    targets = _targets(target, result)
    axis = jm.channel_axis
    return Probe(
        activations={n: _canonical(n, a, axis, reshape) for n, a in zip(names, result["activations"])},
        gradients={n: _canonical(n, g, axis, reshape) for n, g in zip(names, result["gradients"])},
        scores=result["scores"].astype(np.float32),
        targets=targets,
        logits=result.get("logits"),
        input_size=_spatial_size(batch.shape, axis),
        layers=list(names),
    )


def _cached(key: tuple[Any, ...], build: Callable[[], Any]) -> Any:
    """``_CACHE[key]``, built on first use; the least recently used entry is dropped past ``_CACHE_SIZE``."""
    value = _CACHE.get(key)
    if value is None:
        value = _CACHE[key] = build()
        if len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    return value


_CACHE: collections.OrderedDict[tuple[Any, ...], Any] = collections.OrderedDict()
_TRACES: collections.Counter[tuple[Any, ...]] = collections.Counter()


def _trace_count(model: Any) -> int:
    """How many times the probes compiled for ``model`` have been traced (for tests)."""
    structure = _structure(_as_model(model))
    return sum(count for key, count in _TRACES.items() if key[1] == structure)


# --- Guided Backprop and Deconvnet: the forward's jaxpr with its ReLUs replaced ------------------


def _rectifier(rule: str) -> Callable[[jax.Array], jax.Array]:
    """``max(x, 0)`` with the backward of ``rule``: guided ``g [x > 0] [g > 0]``, deconvnet ``g [g > 0]``."""

    @jax.custom_vjp
    def relu(x: jax.Array) -> jax.Array:
        return jnp.maximum(x, 0)

    def forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.maximum(x, 0), x

    def backward(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
        passes = g > 0 if rule == "deconvnet" else (x > 0) & (g > 0)
        return (jnp.where(passes, g, jnp.zeros_like(g)),)

    relu.defvjp(forward, backward)
    return relu


_RECTIFIERS = {rule: _rectifier(rule) for rule in ("guided", "deconvnet")}

# call-like primitives whose body is evaluated in place to reach the ReLUs inside
_INLINED = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint"})
# primitives whose body has its own derivative rule: their insides are not the model's ReLUs
_OPAQUE = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


def _rectified_forward(structure: _Structure, variables: Any, x: jax.Array, rule: str) -> Any:
    """The model's outputs with every ReLU replaced by the rule's ``custom_vjp`` ReLU."""
    closed, out_shape = jax.make_jaxpr(lambda v, xb: _forward(structure, v, xb), return_shape=True)(variables, x)
    if not _has_relu(closed.jaxpr):
        raise ValueError(f"{rule} needs ReLUs (jax.nn.relu or jnp.maximum(x, 0)); this model's forward has none")
    flat = jax.tree_util.tree_leaves((variables, x))
    outputs = _eval_rectified(closed.jaxpr, closed.consts, flat, _RECTIFIERS[rule])
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outputs)


def _eval_rectified(jaxpr: Any, consts: list[Any], args: list[Any], relu: Callable[[Any], Any]) -> list[Any]:
    """Evaluate ``jaxpr`` as ``jax.core.eval_jaxpr`` does, but with ``relu`` in place of each ReLU."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        if _is_relu(eqn):
            outputs = [relu(next(v for v, var in zip(inputs, eqn.invars) if not isinstance(var, jax_core.Literal)))]
        elif eqn.primitive.name in _INLINED and _eqn_has_relu(eqn):
            body, body_consts = _body(eqn)
            outputs = _eval_rectified(body, body_consts, inputs, relu)
        else:
            if _eqn_has_relu(eqn):
                raise ValueError(
                    f"guided backprop cannot reach the ReLUs inside a '{eqn.primitive.name}' "
                    "(a loop or branch such as flax.linen.scan or lax.cond); explain a model without it"
                )
            with eqn.ctx.manager:
                answer = eqn.primitive.bind(*inputs, **_bind_params(eqn))
            outputs = answer if eqn.primitive.multiple_results else [answer]
        env.update(zip(eqn.outvars, outputs))
    return [read(v) for v in jaxpr.outvars]


def _bind_params(eqn: Any) -> dict[str, Any]:
    params = eqn.primitive.get_bind_params(eqn.params)
    # JAX before 0.5 returned (subfuns, params); the call-like primitives that had subfuns are inlined
    return params if isinstance(params, dict) else params[1]


def _body(eqn: Any) -> tuple[Any, list[Any]]:
    """The (open) body and consts of a call-like equation."""
    body = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
    if isinstance(body, jax_core.ClosedJaxpr):
        return body.jaxpr, list(body.consts)
    return body, []


def _is_relu(eqn: Any) -> bool:
    """``max(x, 0)`` with a literal zero, or a ``custom_jvp_call`` (``jax.nn.relu``) whose body is just that."""
    if eqn.primitive.name == "max":
        literals = [v for v in eqn.invars if isinstance(v, jax_core.Literal)]
        return len(literals) == 1 and np.ndim(literals[0].val) == 0 and literals[0].val == 0
    if eqn.primitive.name == "custom_jvp_call" and eqn.params.get("num_consts", 0) == 0 and len(eqn.invars) == 1:
        return _is_relu_body(eqn.params["call_jaxpr"].jaxpr)
    return False


def _is_relu_body(jaxpr: Any) -> bool:
    if len(jaxpr.eqns) != 1:
        return False
    (eqn,) = jaxpr.eqns
    if eqn.primitive.name in _INLINED:
        return _is_relu_body(_body(eqn)[0])
    return _is_relu(eqn) and eqn.primitive.name == "max"


def _has_relu(jaxpr: Any) -> bool:
    return any(_is_relu(eqn) or _eqn_has_relu(eqn) for eqn in jaxpr.eqns)


def _eqn_has_relu(eqn: Any) -> bool:
    """Whether a ReLU of the model lies inside this equation's sub-jaxprs."""
    if eqn.primitive.name in _OPAQUE:
        return False
    return any(_has_relu(body) for body in jax_core.jaxprs_in_params(eqn.params))


# --- layouts and input checks ------------------------------------------------------------------


def _channels_first(array: np.ndarray, channel_axis: int) -> np.ndarray:
    """A 4-D output with channels on ``channel_axis`` as NCHW; other ranks are left for ``reshape``."""
    if array.ndim == 4:
        array = np.moveaxis(array, channel_axis, 1)
    return np.ascontiguousarray(array, dtype=np.float32)


def _canonical(name: str, array: np.ndarray, channel_axis: int, reshape: Reshape | None) -> np.ndarray:
    return common.canonical_map(name, _channels_first(array, channel_axis), reshape)


def _spatial_axes(ndim: int, channel_axis: int) -> list[int]:
    channel = channel_axis % ndim
    return [axis for axis in range(1, ndim) if axis != channel]


def _spatial_size(shape: tuple[int, ...], channel_axis: int) -> tuple[int, int]:
    h, w = (shape[axis] for axis in _spatial_axes(len(shape), channel_axis))
    return int(h), int(w)


def _is_spatial(shape: tuple[int, ...], channel_axis: int) -> bool:
    return len(shape) == 4 and all(shape[axis] > 1 for axis in _spatial_axes(4, channel_axis))


def _as_batch(x: Any) -> np.ndarray:
    batch = to_numpy(x)
    if batch.ndim != 4:
        hint = " (add the batch dimension: x[None])" if batch.ndim == 3 else ""
        raise ValueError(
            f"expected a batch of images (N, H, W, C) or (N, C, H, W), got shape {tuple(batch.shape)}{hint}"
        )
    common.check_input(batch)
    return batch


def _pad_batch(chunk: np.ndarray, size: int) -> np.ndarray:
    padding = np.zeros((size - len(chunk), *chunk.shape[1:]), dtype=chunk.dtype)
    return np.concatenate([chunk, padding], axis=0)


def _positive(value: int, what: str) -> int:
    if int(value) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)
