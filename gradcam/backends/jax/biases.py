"""The biases of a Flax model's conv, dense and batch-norm layers (for FullGrad, ``gradcam.reference.fullgrad``).

Why this file exists: a Flax ``linen`` module's variables say which paths own a ``bias``, but not what kind of
layer owns it, nor a batch norm's ``epsilon`` or whether it normalizes with running statistics: those are
attributes of submodules that ``@nn.compact`` creates only while the module runs. So the module is run
abstractly once (``jax.eval_shape``: nothing computed) with ``nn.intercept_methods`` noting each layer of a kind
with a bias, and the numbers are then read off the variables. An ``nnx`` module holds its layers as objects and
is read directly. A ``(features, head)`` pair of functions has no layers to read and is refused.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradcam.backends import inputs as multi
from gradcam.backends.jax import nnx
from gradcam.backends.jax.model import AnyModel, FlaxModel, JaxModel, NnxModel, structure_of, variables_of


def layer_biases(jm: AnyModel, batch: np.ndarray) -> list[tuple[str, np.ndarray]]:
    """``(path, bias (C,) float32)`` of every conv, dense and batch-norm layer with a bias (see the backend's
    ``layer_biases``): in execution order for ``linen``, in ``nnx.iter_modules`` order (by path) for ``nnx``."""
    if isinstance(jm, JaxModel):
        raise TypeError(
            "a (features, head) pair of functions has no layers whose biases can be read; explain a Flax model "
            "(FlaxModel or an nnx module) to use FullGrad"
        )
    if isinstance(jm, NnxModel):
        return _nnx_biases(jm.module)
    return _linen_biases(jm, batch)


def _linen_biases(jm: FlaxModel, batch: np.ndarray) -> list[tuple[str, np.ndarray]]:
    import flax.linen as nn

    kinds = (nn.Conv, nn.ConvTranspose, nn.Dense, nn.BatchNorm)
    seen: dict[str, tuple[Any, Any]] = {}  # path -> (module, the use_running_average it was called with)

    def note(next_fun: Callable[..., Any], args: Any, kw: Any, context: Any) -> Any:
        module = context.module
        if context.method_name == "__call__" and module.path and isinstance(module, kinds):
            seen.setdefault("/".join(module.path), (module, kw.get("use_running_average")))
        return next_fun(*args, **kw)

    structure, variables = structure_of(jm), variables_of(jm)

    def run(v: Any, x: Any) -> Any:
        with nn.intercept_methods(note):
            return multi.called(structure.module.apply, x, v, method=structure.method, **dict(structure.apply_kwargs))

    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)), batch)
    jax.eval_shape(run, variables, abstract)
    found = []
    for name, (module, called_with) in seen.items():
        params, stats = _node(variables, "params", name), _node(variables, "batch_stats", name)
        if isinstance(module, nn.BatchNorm):
            running = module.use_running_average if called_with is None else called_with
            _check_batch_norm(name, running, module.axis)
            scale = params.get("scale") if module.use_scale else None
            shift = params.get("bias") if module.use_bias else None
            found.append((name, _batch_norm_bias(scale, shift, stats["mean"], stats["var"], module.epsilon)))
        elif "bias" in params:
            found.append((name, np.asarray(params["bias"], dtype=np.float32).reshape(-1).copy()))
    return found


def _nnx_biases(module: Any) -> list[tuple[str, np.ndarray]]:
    from flax import nnx as flax_nnx

    found = []
    for name, sub in nnx.module_paths(module).items():
        if isinstance(sub, flax_nnx.BatchNorm):
            _check_batch_norm(name, sub.use_running_average, sub.axis)
            scale, shift, mean, var = (_value(v) for v in (sub.scale, sub.bias, sub.mean, sub.var))
            found.append((name, _batch_norm_bias(scale, shift, mean, var, sub.epsilon)))
        elif isinstance(sub, (flax_nnx.Conv, flax_nnx.ConvTranspose, flax_nnx.Linear)) and sub.bias is not None:
            found.append((name, np.asarray(_value(sub.bias), dtype=np.float32).reshape(-1).copy()))
    return found


def _check_batch_norm(name: str, running: Any, axis: Any) -> None:
    if not running:
        raise ValueError(
            f"batch norm {name!r} normalizes with the batch's own statistics (use_running_average=False), so it "
            "adds no fixed bias; explain the model with running averages (use_running_average=True, or "
            "module.eval() for nnx)"
        )
    if axis != -1:
        raise ValueError(f"batch norm {name!r} normalizes axis {axis}, not the last (channels-last) axis")


def _batch_norm_bias(scale: Any, shift: Any, mean: Any, var: Any, epsilon: float) -> np.ndarray:
    """``beta - gamma * mean / sqrt(var + eps)`` (``gamma = 1``, ``beta = 0`` where the layer has none)."""
    mean = np.asarray(mean, dtype=np.float64)
    gamma = 1.0 if scale is None else np.asarray(scale, dtype=np.float64)
    beta = 0.0 if shift is None else np.asarray(shift, dtype=np.float64)
    return (beta - gamma * mean / np.sqrt(np.asarray(var, dtype=np.float64) + epsilon)).astype(np.float32)


def _node(variables: Mapping[str, Any], collection: str, path: str) -> Mapping[str, Any]:
    node: Any = variables.get(collection, {})
    for part in path.split("/"):
        node = node.get(part, {}) if isinstance(node, Mapping) else {}
    return node if isinstance(node, Mapping) else {}


def _value(variable: Any) -> Any:
    # ``variable[...]``: the array a Variable holds (``.value`` is deprecated in Flax 0.12)
    return None if variable is None else variable[...]
