"""The probe as one ``jax.jit`` function: activations, gradients at the layers, scores, and the input gradient.

Why this module exists (DESIGN.md sections 5 and 7):

* At a requested layer the forward keeps the output ``A`` and hands on ``A + eps`` with ``eps = 0``,
  so ``d y / d eps`` is exactly ``d y / d A``. The gradients come from one ``jax.vjp`` with respect
  to those ``eps`` only: never the variables, never the input (unless the input gradient is asked).
* The whole probe is one jitted function, built once per (model structure, layers, rule, target
  kind) and kept in the bounded cache; the variables are an argument, not a constant, and JAX
  compiles again only for a new input shape. Its cost is therefore that of the jitted forward.
* Class targets are checked against the number of classes of the traced output shape *before* the
  compiled function runs; inside it a class index is trusted.
"""
from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from gradcam.backends import common
from gradcam.backends import inputs as multi
from gradcam.backends.jax import model
from gradcam.backends.jax.guided import rectified_forward

# how often each compiled probe was traced, by its cache key (for tests: one trace per input shape)
_TRACES: collections.Counter[tuple[Any, ...]] = collections.Counter()


def run(
    jm: model.AnyModel,
    batch: np.ndarray,
    names: list[str],
    rule: str,
    with_input_gradient: bool,
    target: common.Target,
    explained: Any = None,
    at: str = "output",
) -> dict[str, Any]:
    """Run the cached jitted probe on ``batch``, after checking ``target`` against the model's output shape;
    ``at``: the layers' outputs, or their inputs (``"input"``).

    ``batch`` is one array, or the list or dict of a model's several inputs with ``explained`` the key of the one
    explained: the input gradient is taken with respect to it alone.

    Returns
    -------
    dict
        NumPy arrays: ``scores``, ``targets`` (the class per image, -1 for a callable target),
        ``activations`` and ``gradients`` (tuples in the order of ``names``), ``logits`` when the
        output is ``(N, classes)``, and ``input_gradient`` when asked for; ``relu_count``, the number of ReLUs
        the rule rewrote (-1 for the plain rule).
    """
    structure, variables = model.structure_of(jm), model.variables_of(jm)
    output_shape = model.trace(structure, variables, batch).output_shape
    if output_shape is None and not callable(target):
        raise ValueError(
            "the model's output is not one array, so not (N, classes); "
            "give target= a callable that maps the output to one score per image"
        )
    classes = common.requested_classes(
        target, multi.parts_rows(batch), common.output_classes(output_shape, target)
    )
    # an index past int32 is past any class range; clip so that the cast cannot wrap into a valid class
    classes = np.clip(classes, common.TOP1, np.iinfo(np.int32).max).astype(np.int32)
    target_fn = target if callable(target) else None
    neuron = _neuron_layer(jm, batch, names, target, rule, common.check_at(at))
    key = ("probe", structure, tuple(names), rule, with_input_gradient, target_fn, explained, at, neuron)
    traced, fn = model.CACHE.get(
        key,
        lambda: _compiled(key, structure, tuple(names), rule, with_input_gradient, target_fn, explained, at, neuron),
    )
    result = jax.tree_util.tree_map(np.asarray, fn(variables, batch, classes))
    result["relu_count"] = traced.relu_count
    return result


def _neuron_layer(
    jm: model.AnyModel, batch: Any, names: list[str], target: common.Target, rule: str, at: str
) -> tuple[str, int] | None:
    """A ``Neuron`` target's layer (its canonical name) and the channel axis of its output; ``None`` for any other
    target. Its output is seen by the tap of the plain forward, so the ReLU rules and layer inputs cannot have one.

    A unit whose layer finishes before every explained layer cannot depend on them; JAX would give a zero
    gradient without a word, so it is refused here, as autograd refuses it in the other backends."""
    if common.unit_target(target) is None:
        return None
    if rule != "plain" or at != "output":
        raise ValueError(
            "the JAX backend scores a Neuron target in the plain forward at the layers' outputs only; use it with "
            "the gradient methods (Grad-CAM, saliency ...) without of_input, not with Guided Backprop or Deconvnet"
        )
    (name,) = model.resolve_layers(jm, batch, [target.layer])
    order = list(model.trace(model.structure_of(jm), model.variables_of(jm), batch).calls)
    if names and all(order.index(name) < order.index(explained) for explained in names):
        raise common.score_independent_of(names, f"; the Neuron's layer {name!r} runs before them")
    return name, jm.channel_axis


def _compiled(key: tuple[Any, ...], *args: Any) -> tuple[_Probe, Callable[..., Any]]:
    """The probe object (which keeps what its trace counted) and its jitted function."""
    traced = _Probe(key, *args)
    return traced, jax.jit(traced)


def trace_count(structure: model.Structure) -> int:
    """How many times the probes compiled for ``structure`` have been traced."""
    return sum(count for key, count in _TRACES.items() if key[1] == structure)


class _Probe:
    """The traced probe: ``(variables, x, classes) -> dict`` of activations, gradients, scores, targets,
    logits (and the input gradient); ``classes`` holds one class per image, -1 for the top-1 class."""

    def __init__(
        self,
        key: tuple[Any, ...],
        structure: model.Structure,
        names: tuple[str, ...],
        rule: str,
        with_input_gradient: bool,
        target_fn: Callable[[Any], Any] | None,
        explained: Any = None,
        at: str = "output",
        neuron: tuple[str, int] | None = None,
    ) -> None:
        self.key = key
        self.at = at  # the layers' outputs or their inputs
        self.neuron = neuron  # a Neuron target's layer and the channel axis of its output
        self.explained = explained  # the key of the explained one of several inputs (None: one input)
        self.structure = structure
        self.names = names
        self.rule = rule
        self.with_input_gradient = with_input_gradient
        self.target_fn = target_fn
        # ReLUs the rule rewrote, counted while tracing (every trace of one structure counts the same)
        self.relu_count = -1

    def __call__(self, variables: Any, everything: Any, classes: jax.Array) -> dict[str, Any]:
        _TRACES[self.key] += 1
        calls = model.trace(self.structure, variables, everything, self.at).calls
        zeros = {name: jnp.zeros(calls[name].shape, calls[name].dtype) for name in self.names}
        x = self._explained(everything)  # what the input gradient is taken with respect to

        def tapped(xe: jax.Array, eps: dict[str, jax.Array]) -> tuple[jax.Array, tuple[Any, ...]]:
            return self._tapped_total(variables, classes, calls, self._inputs(everything, xe), eps)

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
                lambda xe: self._rectified_total(variables, classes, self._inputs(everything, xe)), x, has_aux=True
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

    def _explained(self, x: Any) -> jax.Array:
        return x if self.explained is None else x[self.explained]

    def _inputs(self, x: Any, explained: jax.Array) -> Any:
        """``x`` with ``explained`` in the explained input's place (the other inputs are constants of the vjp)."""
        if self.explained is None:
            return explained
        parts = dict(x) if isinstance(x, dict) else list(x)
        parts[self.explained] = explained
        return parts

    def _tapped_total(
        self,
        variables: Any,
        classes: jax.Array,
        calls: dict[str, model.LayerCall],
        x: jax.Array,
        eps: dict[str, jax.Array],
    ) -> tuple[jax.Array, tuple[Any, ...]]:
        """``sum_n y_n`` with ``eps[name]`` added to each requested layer's output (or input); the outputs,
        scores, targets and the layers' outputs (inputs) ride along."""
        captured: dict[str, jax.Array] = {}
        seen: dict[str, jax.Array] = {}

        def tap(name: str, index: int, output: Any) -> Any:
            # only the last call of a layer is the one explained; earlier calls pass unchanged
            if index != calls[name].count - 1:
                return output
            if name in eps:
                captured[name] = output
                output = output + eps[name]
            if self.neuron is not None and name == self.neuron[0]:
                seen["neuron"] = output  # after the eps, so that a unit of an explained layer is scored through it
            return output

        outputs = model.forward(self.structure, variables, x, tap, self.at)
        scores, targets = _target_scores(outputs, classes, self._scorer(seen))
        return jnp.sum(scores), (outputs, scores, targets, captured)

    def _scorer(self, seen: dict[str, jax.Array]) -> Callable[[Any], Any] | None:
        """The target function: a ``Neuron``'s scores its layer's output that the tap saw, any other is as given."""
        if self.neuron is None:
            return self.target_fn
        neuron, axis = self.target_fn, self.neuron[1]
        return lambda outputs: neuron.layer_score(seen["neuron"], axis)

    def _rectified_total(self, variables: Any, classes: jax.Array, x: jax.Array) -> tuple[jax.Array, tuple[Any, ...]]:
        outputs, self.relu_count = rectified_forward(self.structure, variables, x, self.rule)
        scores, targets = _target_scores(outputs, classes, self.target_fn)
        return jnp.sum(scores), (outputs, scores, targets)


def _target_scores(
    outputs: Any, classes: jax.Array, target_fn: Callable[[Any], Any] | None
) -> tuple[jax.Array, jax.Array]:
    """``(scores (N,), targets (N,))``; ``classes`` holds -1 where the top-1 class is wanted.

    Class targets were checked against the output's shape, an ``(N, classes)`` array, before the probe ran.
    """
    n = classes.shape[0]
    if target_fn is not None:
        scores = target_fn(outputs)
        if not hasattr(scores, "shape") or tuple(scores.shape) != (n,):
            raise common.target_function_shape_error(
                n, tuple(scores.shape) if hasattr(scores, "shape") else type(scores).__name__
            )
        return jnp.asarray(scores, jnp.float32), jnp.full((n,), common.TOP1, jnp.int32)
    logits = outputs.astype(jnp.float32)
    top1 = jnp.argmax(logits, axis=1).astype(jnp.int32)
    targets = jnp.where(classes < 0, top1, classes)
    return jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0], targets
