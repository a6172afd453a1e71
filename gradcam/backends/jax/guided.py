"""Guided Backprop and Deconvnet for JAX: the forward's jaxpr evaluated again with its ReLUs replaced.

Why this module exists: those rules change the backward of every ReLU, and a JAX model offers no
hook to do that (its ReLUs are plain function calls, ``flax.linen.relu`` is ``jax.nn.relu``). The
model is not changed either: the forward is traced to a jaxpr and evaluated again with every
``jax.nn.relu`` (and every ``max(x, 0)``) replaced by a ``jax.custom_vjp`` ReLU with the rule's
backward. Calls into ``jit`` and ``remat`` are inlined to reach their ReLUs; a ReLU inside a loop or
a branch (``nn.scan``, ``lax.cond``) is refused with an error rather than silently left plain. A
``max(0, variance)`` whose result goes into a square root is a normalization's clamp, not a ReLU of the
model (Flax's LayerNorm and BatchNorm in training mode write one), and keeps its plain backward.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jax_core

from gradcam.backends.jax.model import Structure, forward

# call-like primitives whose body is evaluated in place to reach the ReLUs inside
_INLINED = frozenset({"jit", "pjit", "closed_call", "core_call", "remat2", "checkpoint"})
# what may lie between a normalization's variance clamp and its square root
_ON_THE_WAY = frozenset(
    {"add", "convert_element_type", "mul", "sub", "div", "reshape", "broadcast_in_dim", "squeeze", "expand_dims"}
)
# primitives whose body has its own derivative rule: their insides are not the model's ReLUs
_OPAQUE = frozenset({"custom_jvp_call", "custom_vjp_call", "custom_vjp_call_jaxpr"})


def _rectifier(rule: str) -> Callable[[jax.Array], jax.Array]:
    """``max(x, 0)`` with the backward of ``rule``: guided ``g [x > 0] [g > 0]``, deconvnet ``g [g > 0]``."""

    @jax.custom_vjp
    def relu(x: jax.Array) -> jax.Array:
        return jnp.maximum(x, 0)

    def relu_forward(x: jax.Array) -> tuple[jax.Array, jax.Array]:
        return jnp.maximum(x, 0), x

    def relu_backward(x: jax.Array, g: jax.Array) -> tuple[jax.Array]:
        passes = g > 0 if rule == "deconvnet" else (x > 0) & (g > 0)
        return (jnp.where(passes, g, jnp.zeros_like(g)),)

    relu.defvjp(relu_forward, relu_backward)
    return relu


_RECTIFIERS = {rule: _rectifier(rule) for rule in ("guided", "deconvnet")}


def rectified_forward(structure: Structure, variables: Any, x: jax.Array, rule: str) -> tuple[Any, int]:
    """The model's outputs with every ReLU replaced by the ``custom_vjp`` ReLU of ``rule`` (guided | deconvnet), and
    the number of ReLUs replaced (0: the outputs are the plain forward's, and so will their gradient be).

    Raises
    ------
    ValueError
        When the forward has a ReLU inside a loop or a branch.
    """
    closed, out_shape = jax.make_jaxpr(lambda v, xb: forward(structure, v, xb), return_shape=True)(variables, x)
    flat = jax.tree_util.tree_leaves((variables, x))
    replaced: list[None] = []

    def relu(operand: Any) -> Any:
        replaced.append(None)
        return _RECTIFIERS[rule](operand)

    outputs = _eval_rectified(closed.jaxpr, closed.consts, flat, relu)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(out_shape), outputs), len(replaced)


def _eval_rectified(jaxpr: Any, consts: list[Any], args: list[Any], relu: Callable[[Any], Any]) -> list[Any]:
    """Evaluate ``jaxpr`` as ``jax.core.eval_jaxpr`` does, but with ``relu`` in place of each ReLU."""
    env: dict[Any, Any] = {}

    def read(v: Any) -> Any:
        return v.val if isinstance(v, jax_core.Literal) else env[v]

    env.update(zip(jaxpr.constvars, consts, strict=True))
    env.update(zip(jaxpr.invars, args, strict=True))
    clamps = _variance_clamps(jaxpr)
    for eqn in jaxpr.eqns:
        inputs = [read(v) for v in eqn.invars]
        if _is_relu(eqn) and id(eqn) not in clamps:
            operand = next(
                v for v, var in zip(inputs, eqn.invars, strict=True) if not isinstance(var, jax_core.Literal)
            )
            outputs = [relu(operand)]
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
        env.update(zip(eqn.outvars, outputs, strict=True))
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
    clamps = _variance_clamps(jaxpr)
    return any((_is_relu(eqn) and id(eqn) not in clamps) or _eqn_has_relu(eqn) for eqn in jaxpr.eqns)


def _variance_clamps(jaxpr: Any) -> set[int]:
    """The ids of the ``max(x, 0)`` equations whose result reaches a square root within four elementwise or
    reshaping steps (``rsqrt(reshape(max(0, var)) + eps)``): normalizations' variance clamps, not ReLUs."""
    users: dict[Any, list[Any]] = {}
    for eqn in jaxpr.eqns:
        for var in eqn.invars:
            if not isinstance(var, jax_core.Literal):
                users.setdefault(var, []).append(eqn)
    clamps = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name != "max" or not _is_relu(eqn):
            continue
        frontier = list(eqn.outvars)
        for _ in range(4):
            reached = [user for var in frontier for user in users.get(var, [])]
            if any(user.primitive.name in ("rsqrt", "sqrt") for user in reached):
                clamps.add(id(eqn))
                break
            frontier = [out for user in reached if user.primitive.name in _ON_THE_WAY for out in user.outvars]
    return clamps


def _eqn_has_relu(eqn: Any) -> bool:
    """Whether a ReLU of the model lies inside this equation's sub-jaxprs."""
    if eqn.primitive.name in _OPAQUE:
        return False
    return any(_has_relu(body) for body in jax_core.jaxprs_in_params(eqn.params))
