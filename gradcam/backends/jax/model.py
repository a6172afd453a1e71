"""A JAX or Flax model as functions the backend can cut at a layer, and the trace that names its layers.

Why this module exists (DESIGN.md sections 5 and 7):

* A JAX model is a function, so it has no layers to name unless it says where they are. Two kinds
  do: a pair of pure functions ``(features, head)`` with ``head(features(x))`` the outputs (the
  layer is the output of ``features``, named ``"features"``), and a Flax ``linen`` module with its
  variables, whose layers are module paths (``"backbone/layer4"``). ``JaxModel`` and
  ``FlaxModel`` hold them with their channel axis; plain tuples are the shorthand for NHWC.
* A Flax module is never changed. ``flax.linen.intercept_methods`` sees every submodule's
  ``__call__`` during one trace and hands each output to a callback, which may pass it on changed
  (the probe adds a zero to take the gradient there, the ablation zeroes a channel).
* A Flax ``nnx`` module is split into its structure and state and merged again inside each trace (``nnx``).
* ``output`` selects one entry of a dict, tuple or dataclass output, for every kind of model.
* A layer called more than once in one forward is taken at its **last** call, as in the torch backend.
* A layer's *input* (``at="input"``: a Flax ``linen`` module's first argument) passes through the same
  callback before the layer runs; a pair's one layer and ``nnx`` modules are read at their outputs only.
* The layers, their output shapes and the model's output shape come from one abstract trace
  (``jax.eval_shape``: nothing computed), cached per input shape; the output shape lets class targets
  be checked against the number of classes before the compiled probe runs.
* Compiled functions close over the model *without* its variables (``Structure``), which is their
  cache key: a fresh ``(module, variables)`` tuple per call finds the function compiled for an equal module.
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

from gradcam.backends import common
from gradcam.backends import inputs as multi
from gradcam.backends.jax import nnx

FEATURES = "features"

# compiled probes, forwards and traced layer lists kept at once; the least recently used goes first
CACHE = common.LRUCache(64)

OnOutput = Callable[[str, int, Any], Any]


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
    output
        The output to explain when ``head`` returns several: a dict key, a tuple index or a dataclass field.
    """

    features: Callable[[Any], Any]
    head: Callable[[Any], Any]
    channel_axis: int = -1
    output: Hashable = None


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
        Static keyword arguments of every ``apply``: a module whose ``__call__`` takes a flag such as
        ``train`` is explained with ``FlaxModel(module, variables, apply_kwargs={"train": False})``; hashable
        values (arrays go in the variables).
    output
        The output to explain when the module returns several: a dict key, a tuple index or a dataclass field.
    """

    module: Any
    variables: Mapping[str, Any]
    channel_axis: int = -1
    method: str | Callable[..., Any] | None = None
    apply_kwargs: Mapping[str, Hashable] = field(default_factory=dict)
    output: Hashable = None


@dataclass(frozen=True, eq=False)
class NnxModel:
    """A Flax ``nnx.Module`` as it is (a bare one is taken as this); layers are attribute paths (``"blocks/0"``).

    Parameters
    ----------
    module
        The module, called as ``module(x)`` on a copy made inside each trace: it is never changed. Put it in the
        mode to explain first (``module.eval()``: batch norm with running statistics, no dropout).
    channel_axis, output
        As for ``FlaxModel``.
    """

    module: Any
    channel_axis: int = -1
    output: Hashable = None


AnyModel = JaxModel | FlaxModel | NnxModel


@dataclass(frozen=True, eq=False)
class Structure:
    """What a compiled function closes over: the model without its variables.

    It is the cache key, so it hashes and compares by value where it can. A module with unhashable
    attributes (a list field) is keyed by identity instead.
    """

    kind: str  # "pair" | "flax" | "nnx" (module: the graph definition)
    features: Any = None
    head: Any = None
    module: Any = None
    method: Any = None
    apply_kwargs: tuple[tuple[str, Hashable], ...] = ()
    output: Hashable = None

    def __post_init__(self) -> None:
        module_key: Any = self.module
        try:
            hash(module_key)
        except TypeError:
            module_key = _Identity(self.module)
        key = (self.kind, self.features, self.head, module_key, self.method, self.apply_kwargs, self.output)
        object.__setattr__(self, "_key", key)

    def __hash__(self) -> int:
        return hash(self._key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Structure) and self._key == other._key


class _Identity:
    """Hashes and compares by identity (and keeps its object alive, so that no other takes its id)."""

    def __init__(self, obj: Any) -> None:
        self.obj = obj

    def __hash__(self) -> int:
        return id(self.obj)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Identity) and other.obj is self.obj


class LayerCall(NamedTuple):
    """How often a layer ran in one forward, and its output's shape and dtype (None: not one array)."""

    count: int
    shape: tuple[int, ...] | None
    dtype: Any


class Trace(NamedTuple):
    """One abstract forward: ``name -> LayerCall`` in execution order, and the model's output shape
    (None when the output is not one array)."""

    calls: dict[str, LayerCall]
    output_shape: tuple[int, ...] | None


def looks_like_model(model: Any) -> bool:
    """Whether ``model`` is, or looks meant to be, a JAX model (a bare one is refused by ``as_model``)."""
    models = (JaxModel, FlaxModel, NnxModel)
    return isinstance(model, models) or nnx.is_nnx_module(model) or _is_pair(model) or _is_bare(model)


def as_model(model: Any) -> AnyModel:
    """``model`` as a ``JaxModel``, ``FlaxModel`` or ``NnxModel``; what cannot be split at a layer is refused."""
    if isinstance(model, (JaxModel, FlaxModel, NnxModel)):
        return model
    if nnx.is_nnx_module(model):
        return NnxModel(model)
    if _is_pair(model):
        first, second = model
        return FlaxModel(first, second) if _is_flax_module(first) else JaxModel(first, second)
    if _is_bare(model):
        raise TypeError(
            "this JAX model does not say where its layers are: pass (features, head), two functions with "
            "head(features(x)) the outputs (or gradcam.backends.jax.JaxModel), a Flax linen module with its "
            "variables as (module, variables) (or gradcam.backends.jax.FlaxModel), or a Flax nnx module"
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


def structure_of(jm: AnyModel) -> Structure:
    """The model without its variables: what a compiled function closes over, and its cache key."""
    if isinstance(jm, JaxModel):
        return Structure("pair", features=jm.features, head=jm.head, output=jm.output)
    if isinstance(jm, NnxModel):
        return Structure("nnx", module=nnx.split(jm.module)[0], output=jm.output)
    kwargs = tuple(sorted(jm.apply_kwargs.items()))
    try:
        hash(kwargs)
    except TypeError:
        raise TypeError(
            "FlaxModel.apply_kwargs must hold static, hashable values (flags such as train=False); "
            "pass arrays through the variables"
        ) from None
    return Structure("flax", module=jm.module, method=jm.method, apply_kwargs=kwargs, output=jm.output)


def variables_of(jm: AnyModel) -> Any:
    """The argument a compiled function takes for the model's variables (None for a pair, the state for nnx)."""
    if isinstance(jm, NnxModel):
        return nnx.split(jm.module)[1]
    return jm.variables if isinstance(jm, FlaxModel) else None


def variable_paths(jm: FlaxModel | NnxModel) -> list[str]:
    """The paths of the modules that own variables and their parents, in the variables' order (for nnx: every
    submodule's attribute path)."""
    if isinstance(jm, NnxModel):
        return list(nnx.module_paths(jm.module))
    names: dict[str, None] = {}

    def visit(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            if isinstance(value, Mapping):
                names.setdefault(prefix + key, None)
                visit(value, prefix + key + "/")

    for collection in jm.variables.values():
        visit(collection, "")
    return list(names)


def forward(
    structure: Structure, variables: Any, x: Any, on_output: OnOutput | None = None, at: str = "output"
) -> Any:
    """The model's outputs (the selected one); each layer output passes through ``on_output(name, call_index,
    output)`` (``at="input"``: each layer's input, the layer then running on what ``on_output`` returns)."""
    if on_output is not None and common.check_at(at) == "input" and structure.kind != "flax":
        raise ValueError(
            "layers are read at their inputs (at='input') in a Flax linen module only; a (features, head) pair's "
            "layer input is the model's input, and nnx modules are read at their outputs"
        )
    return common.select_output(_outputs(structure, variables, x, on_output, at), structure.output)


def _outputs(structure: Structure, variables: Any, x: Any, on_output: OnOutput | None, at: str = "output") -> Any:
    if structure.kind == "pair":
        features = multi.called(structure.features, x)
        if on_output is not None:
            features = on_output(FEATURES, 0, features)
        return structure.head(features)
    if structure.kind == "nnx":
        return nnx.forward(structure.module, variables, x, on_output)
    import flax.linen as nn

    kwargs = dict(structure.apply_kwargs)
    if on_output is None:
        return multi.called(structure.module.apply, x, variables, method=structure.method, **kwargs)
    calls: collections.Counter[str] = collections.Counter()

    def interceptor(next_fun: Callable[..., Any], args: Any, kw: Any, context: Any) -> Any:
        path = context.module.path
        if context.method_name != "__call__" or not path:
            return next_fun(*args, **kw)
        name = "/".join(path)
        calls[name] += 1
        if at == "output":
            return on_output(name, calls[name] - 1, next_fun(*args, **kw))
        if not args:
            raise TypeError(f"layer {name!r} is called without a positional input; choose a module called on one")
        return next_fun(on_output(name, calls[name] - 1, args[0]), *args[1:], **kw)

    with nn.intercept_methods(interceptor):
        return multi.called(structure.module.apply, x, variables, method=structure.method, **kwargs)


def ablated_forward(structure: Structure, name: str, axis: int, first: int) -> Callable[..., Any]:
    """``(variables, x, channels) -> outputs`` with channel ``channels[n]`` of layer ``name`` zeroed in image ``n``:
    on ``axis`` of the layer's output and, for tokens ``(N, T, C)``, at tokens ``first`` onward only."""

    def run(variables: Any, x: jax.Array, channels: jax.Array) -> Any:
        def ablate(layer: str, index: int, output: Any) -> Any:
            if layer != name:
                return output
            dropped = jax.nn.one_hot(channels, output.shape[axis], dtype=output.dtype)  # (N, K)
            if output.ndim == 3 and axis == -1:
                patches = (jnp.arange(output.shape[1]) >= first).astype(output.dtype)
                return output * (1 - dropped[:, None, :] * patches[None, :, None])
            kept = (1 - dropped).reshape(dropped.shape[0], *[1] * (output.ndim - 2), dropped.shape[1])
            return output * jnp.moveaxis(kept, -1, axis)

        return forward(structure, variables, x, ablate)

    return run


def trace(structure: Structure, variables: Any, x: Any, at: str = "output") -> Trace:
    """Every layer with its calls, and the output shape, for ``x``'s shape (traced once per shape, cached); the
    layers' shapes are those of their inputs for ``at="input"``."""
    # x: one array, or a list or dict of a model's several inputs
    leaves, tree = jax.tree_util.tree_flatten(x)
    key = ("trace", structure, tree, tuple((tuple(leaf.shape), str(leaf.dtype)) for leaf in leaves), at)
    return CACHE.get(key, lambda: _trace(structure, variables, x, at))


def _trace(structure: Structure, variables: Any, x: Any, at: str = "output") -> Trace:
    calls: dict[str, LayerCall] = {}

    def record(name: str, index: int, output: Any) -> Any:
        # re-inserted at each call, so that the order is that of the last calls
        calls.pop(name, None)
        calls[name] = LayerCall(index + 1, *_shape_dtype(output))
        return output

    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), (variables, x))
    output = jax.eval_shape(lambda v, xb: forward(structure, v, xb, record, at), *abstract)
    return Trace(calls, _shape_dtype(output)[0])


def _shape_dtype(value: Any) -> tuple[tuple[int, ...] | None, Any]:
    if isinstance(value, jax.ShapeDtypeStruct) or hasattr(value, "aval"):
        return tuple(int(d) for d in value.shape), value.dtype
    return None, None


def resolve_layers(jm: AnyModel, batch: np.ndarray, specs: list[Any]) -> list[str]:
    """Canonical names of the requested layers, in the order given, without repeats."""
    if not specs:
        return []
    calls = trace(structure_of(jm), variables_of(jm), batch).calls
    resolved: dict[str, None] = {}
    for spec in specs:
        try:
            name = resolve_name(list(calls), spec)
        except KeyError:
            _refuse_if_not_called(jm, spec)
            raise
        if calls[name].shape is None:
            raise TypeError(f"layer {name!r} does not return one array; choose a module whose output is one array")
        resolved.setdefault(name, None)
    return list(resolved)


def _refuse_if_not_called(jm: AnyModel, spec: str) -> None:
    """The "did not run" error for a module that owns variables but was not called in this forward."""
    if isinstance(jm, (FlaxModel, NnxModel)):
        try:
            name = common.resolve_path(variable_paths(jm), spec)
        except KeyError:
            return
        raise common.layers_did_not_run([name]) from None


def resolve_name(names: list[str], spec: Any) -> str:
    """The one layer in ``names`` that ``spec`` (a path, or a module name unique in the model) names."""
    if not isinstance(spec, str):
        raise TypeError(f"a JAX layer is a name or a module path such as 'backbone/layer4', got {type(spec).__name__}")
    return common.resolve_path(names, spec)
