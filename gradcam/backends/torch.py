"""PyTorch backend: activations and gradients of a ``torch.nn.Module`` as NumPy arrays.

Why it is built this way (DESIGN.md sections 5 and 7):

* Grad-CAM should cost one inference. ``probe`` runs the forward under ``no_grad``; the forward
  hook of the first requested layer to fire switches grad mode on for the rest of that forward and
  hands on a fresh leaf, so nothing before the earliest layer records a graph. The gradients come
  from ``torch.autograd.grad(scores, activations)``, which walks only the edges that lead to the
  activations: the backward stops at the layer and no parameter gradient is ever formed.
* Every hook hands on a *copy* of the output it captured, so an in-place operation downstream (an
  ``inplace=True`` ReLU after a batch norm) can change neither the captured values nor their place
  in the graph.
* A layer called more than once in one forward (a ReLU module shared inside a block) is taken at
  its **last** call, the same rule ``layer_shapes`` and ``default_layer`` use.
* Guided Backprop and Deconvnet change the ReLU backward for one call only: a ``TorchFunctionMode``
  sees every ReLU of the forward (``nn.ReLU``, ``F.relu``, ``torch.relu``, ``Tensor.relu``, in-place
  ``relu_``) and puts a hook on its backward node that rewrites the gradient, and only while the
  rule's own backward runs. Nothing global is changed, so plain gradients stay plain.
* ``input_gradient`` records the whole network, so it sets the parameters' ``requires_grad`` off for
  the call (autograd then keeps nothing that only a parameter gradient needs) and back on after.
* The model is left as found: hooks removed, grad mode and ``requires_grad`` restored, and, for a
  model in training mode, its buffers (batch-norm running statistics) restored; ``.training`` and
  ``.grad`` are never touched. Calling a model from two threads while it is being explained is not
  supported (the hooks live on the modules).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

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
    "dense_weight",
]

RULES = ("plain", "guided", "deconvnet")

Reshape = Callable[[np.ndarray], np.ndarray]

_RELU_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu, torch.nn.functional.relu}
_RELU_IN_PLACE = {torch.relu_, torch.Tensor.relu_}


def is_model(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module``."""
    return isinstance(model, torch.nn.Module)


def to_numpy(x: Any) -> np.ndarray:
    """The input batch as float32 NumPy ``(N, C, H, W)`` (a tensor is moved to the host)."""
    if torch.is_tensor(x):
        return x.detach().to("cpu", torch.float32).numpy()
    return np.asarray(x, dtype=np.float32)


def layer_names(model: torch.nn.Module) -> list[str]:
    """Dotted names of all submodules, as ``named_modules()`` lists them, the root excluded."""
    _require_module(model)
    return [name for name, _ in model.named_modules() if name]


def layer_shapes(model: torch.nn.Module, x: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Each submodule's output shape for input ``x``, in execution order (one forward, no graph).

    A module's place in the order is where its forward *finished* (so a block comes after its
    children) at its last call; modules whose output is not a tensor are left out.
    """
    _require_module(model)
    xt = _as_batch(model, x)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if torch.is_tensor(output):
                shapes.pop(name, None)
                shapes[name] = tuple(output.shape)

        return hook

    with _left_as_found(model) as hooks:
        for name, module in model.named_modules():
            if name:
                hooks.append(module.register_forward_hook(record(name)))
        model(xt)
    return list(shapes.items())


def default_layer(model: torch.nn.Module, x: Any) -> str:
    """The last module, in execution order, whose output is a spatial map ``(N, C, h, w)``, h, w > 1.

    One image of ``x`` is enough to find it (the whole batch when the model is in training mode,
    where batch statistics may need more than one image).
    """
    _require_module(model)
    xt = _as_batch(model, x)
    sample = xt if _is_training(model) else xt[:1]
    spatial = [name for name, shape in layer_shapes(model, sample) if _is_spatial(shape)]
    if not spatial:
        raise ValueError(
            "no module of this model outputs a spatial map (N, C, h, w) with h, w > 1; "
            "pass layers= explicitly, with reshape= for token layers (gradcam.vit_reshape)"
        )
    return spatial[-1]


def dense_weight(model: torch.nn.Module, layer: Any) -> np.ndarray:
    """The ``(classes, inputs)`` weight matrix of an ``nn.Linear`` layer (for CAM), as float32."""
    _require_module(model)
    name, module = _resolve_layer(model, layer)
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a Linear layer")
    return _numpy(module.weight).copy()


def predict(model: torch.nn.Module, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` as float32 NumPy, forward only (under ``no_grad``).

    ``batch_size`` splits the batch into chunks of at most that many images.
    """
    _require_module(model)
    xt = _as_batch(model, x)
    chunks = [xt] if batch_size is None else torch.split(xt, _positive(batch_size, "batch_size"))
    outputs = []
    with _left_as_found(model):
        for chunk in chunks:
            out = model(chunk)
            if not torch.is_tensor(out):
                raise TypeError(
                    f"the model returned a {type(out).__name__}, not a tensor; predict needs a model "
                    "whose output is one tensor (wrap it to select the output)"
                )
            outputs.append(_numpy(out))
    return np.concatenate(outputs, axis=0)


def predict_ablated(model: torch.nn.Module, x: Any, layer: Any, channels: Any) -> np.ndarray:
    """The model's outputs ``(N, ...)`` with channel ``channels[n]`` of ``layer``'s output set to zero for
    image ``n`` (``-1``: nothing zeroed), forward only; the model is not changed.

    A layer that runs more than once in one forward is refused: which of its calls to ablate would be a guess.
    """
    _require_module(model)
    xt = _as_batch(model, x)
    (name,), (module,) = _resolve_layers(model, [layer])
    chosen = torch.as_tensor(np.asarray(channels, dtype=np.int64).reshape(-1), device=xt.device)
    if chosen.shape[0] != xt.shape[0]:
        raise ValueError(f"got {chosen.shape[0]} channels for a batch of {xt.shape[0]} images; give one per image")
    rows = torch.nonzero(chosen >= 0).flatten()
    calls = []

    def zero_channels(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        calls.append(name)
        if len(calls) > 1:
            raise ValueError(f"layer {name!r} runs more than once in one forward; ablating it would be ambiguous")
        ablated = output.clone()
        ablated[rows, chosen[rows]] = 0
        return ablated

    with _left_as_found(model) as hooks, torch.no_grad():
        hooks.append(module.register_forward_hook(zero_channels))
        out = model(xt)
    return _numpy(out)


def probe(
    model: torch.nn.Module,
    x: Any,
    layers: Any = None,
    target: common.Target = None,
    reshape: Reshape | None = None,
) -> Probe:
    """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one backward.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``, explained in the train/eval mode it is in.
    x
        ``(N, C, H, W)`` tensor (any device) or NumPy array; moved to the model's device and dtype.
    layers
        ``None`` (the default layer), a dotted name (``"layer4"``, ``"layer4.1.conv2"``), a module
        of the model, or a list of them.
    target
        ``None`` (top-1 class per image), an int, one int per image, or a callable
        ``f(outputs) -> (N,)`` tensor. The gradient is that of ``sum_n y_n``.
    reshape
        Applied to each layer's activations and gradients (as NumPy) to get ``(N, K, h, w)``, e.g.
        ``gradcam.vit_reshape`` for ViT tokens.
    """
    _require_module(model)
    xt = _as_batch(model, x)
    specs = common.layer_list(layers) or [default_layer(model, xt)]
    names, modules = _resolve_layers(model, specs)
    capture = _Capture(names, modules)
    with _left_as_found(model) as hooks:
        hooks.extend(capture.attach())
        outputs = model(xt)
        torch.set_grad_enabled(True)
        capture.check_all_ran()
        scores, targets, logits = _target_scores(outputs, target, xt.shape[0])
        gradients = _gradients(scores, capture.tensors(), "layer", names)
    return _make_probe(capture, gradients, scores, targets, logits, xt, reshape)


def input_gradient(
    model: torch.nn.Module,
    x: Any,
    target: common.Target = None,
    rule: str = "plain",
    layers: Any = None,
    reshape: Reshape | None = None,
) -> InputGradient:
    """``d y / d x`` ``(N, C, H, W)`` float32, with the ReLU backward given by ``rule``.

    ``rule``: ``"plain"`` (ordinary gradient); ``"guided"`` (Guided Backprop: a ReLU passes the
    gradient only where its input > 0 AND the incoming gradient > 0); ``"deconvnet"`` (only where
    the incoming gradient > 0). With ``layers``, the same forward also captures those layers, and
    ``result.probe`` holds their activations and *plain* gradients (Guided Grad-CAM): the rule is
    switched on only for the second backward, the one that reaches the input.
    """
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    _require_module(model)
    xt = _as_batch(model, x)
    names, modules = _resolve_layers(model, common.layer_list(layers))
    capture = _Capture(names, modules)
    relu_rule = _ReluRule(rule) if rule != "plain" else None
    with _left_as_found(model) as hooks, _parameters_frozen(model):
        hooks.extend(capture.attach())
        torch.set_grad_enabled(True)
        x_leaf = xt.detach().requires_grad_()
        # a copy goes in, so that a model editing its input in place neither fails on the leaf
        # nor changes the caller's tensor
        with relu_rule or contextlib.nullcontext():
            outputs = model(x_leaf.clone())
        capture.check_all_ran()
        scores, targets, logits = _target_scores(outputs, target, xt.shape[0])
        layer_gradients = []
        if names:
            layer_gradients = _gradients(scores, capture.tensors(), "layer", names, keep_graph=True)
        if relu_rule is not None:
            relu_rule.active = True
        (gradient,) = _gradients(scores, [x_leaf], "input", ["input"])
    layer_probe = _make_probe(capture, layer_gradients, scores, targets, logits, xt, reshape) if names else None
    return InputGradient(
        gradient=_numpy(gradient),
        scores=_numpy(scores),
        targets=targets,
        logits=logits,
        probe=layer_probe,
    )


class _Capture:
    """Forward hooks that record the requested layers' outputs, the first one starting the graph."""

    def __init__(self, names: list[str], modules: list[torch.nn.Module]) -> None:
        self.names = names
        self.names_of: dict[torch.nn.Module, list[str]] = {}
        for name, module in zip(names, modules):
            self.names_of.setdefault(module, []).append(name)
        self.outputs: dict[str, torch.Tensor] = {}

    def attach(self) -> list[torch.utils.hooks.RemovableHandle]:
        return [module.register_forward_hook(self._hook) for module in self.names_of]

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> torch.Tensor:
        names = self.names_of[module]
        if not torch.is_tensor(output):
            raise TypeError(
                f"layer {names[0]!r} returns a {type(output).__name__}, not a tensor; "
                "choose a module whose output is one tensor"
            )
        if _shares_storage(output, inputs):
            # the output aliases the module's input (identity, view, in-place op), which the
            # caller may still edit in place after this point
            output = output.clone()
        if not output.requires_grad:
            # the graph starts here: nothing before this layer was recorded
            torch.set_grad_enabled(True)
            output = output.detach().requires_grad_()
        for name in names:
            self.outputs[name] = output
        return output.clone()

    def check_all_ran(self) -> None:
        missing = [name for name in self.names if name not in self.outputs]
        if missing:
            raise RuntimeError(
                f"layer(s) {', '.join(map(repr, missing))} did not run in the model's forward pass "
                "for this input; choose modules that the forward calls"
            )

    def tensors(self) -> list[torch.Tensor]:
        return [self.outputs[name] for name in self.names]


class _ReluRule(TorchFunctionMode):
    """Sees every ReLU of a forward and hooks its backward node to apply ``rule`` while ``active``.

    The hook rewrites what the ReLU node hands back: guided keeps ``grad_in`` (the plain
    ``g * [input > 0]``) where it is > 0; deconvnet passes ``max(g, 0)`` whatever the input's sign.
    (A hook that clamps the incoming gradient was measured cheaper than a custom autograd ReLU,
    DESIGN.md section 7; a hook on the node serves both rules.)
    An in-place ReLU on a view is run out of place and copied back, because autograd folds an
    in-place op on a view into a node of the base tensor, where the ReLU node cannot be reached.
    """

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.active = False

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if func not in _RELU_OUT_OF_PLACE and func not in _RELU_IN_PLACE:
            return func(*args, **kwargs)
        tensor = args[0]
        if _is_in_place(func, args, kwargs) and tensor._is_view() and tensor.requires_grad:
            result = torch.relu(tensor)
            self._hook(result)
            return tensor.copy_(result)
        result = func(*args, **kwargs)
        self._hook(result)
        return result

    def _hook(self, result: torch.Tensor) -> None:
        if result.grad_fn is not None:
            result.grad_fn.register_hook(self._rewrite)

    def _rewrite(self, grad_in: tuple[torch.Tensor, ...], grad_out: tuple[torch.Tensor, ...]) -> Any:
        if not self.active:
            return None
        # grad_in[0] is the node's own fresh result, so it can take the rewritten gradient: no new
        # tensor per ReLU (grad_out[0] may be shared with other branches and is only read)
        source = grad_in[0] if self.rule == "guided" else grad_out[0]
        return (torch.clamp(source, min=0, out=grad_in[0]),)


def _is_in_place(func: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> bool:
    if func in _RELU_IN_PLACE:
        return True
    if func is torch.nn.functional.relu:
        return bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
    return False


def _gradients(
    scores: torch.Tensor,
    tensors: list[torch.Tensor],
    kind: str,
    names: list[str],
    keep_graph: bool = False,
) -> list[torch.Tensor]:
    """``d sum(scores) / d tensors`` without forming any other gradient; clear errors if unreachable."""
    if not scores.requires_grad:
        raise RuntimeError(
            f"the target score does not depend on the {kind} ({', '.join(names)}): "
            "choose a layer that the output is computed from"
        )
    # a scalar root: with a vector root and grad_outputs, the first backward left ~37 MiB more
    # resident memory behind on a ResNet-50 at batch 8 (torch 2.13 and 2.14, CPU)
    grads = torch.autograd.grad(scores.sum(), tensors, retain_graph=keep_graph, allow_unused=True)
    unused = [name for name, grad in zip(names, grads) if grad is None]
    if unused:
        raise RuntimeError(
            f"the target score does not depend on the output of {', '.join(map(repr, unused))}: the "
            "model does not use what that module returns (e.g. an in-place module whose return value is ignored)"
        )
    return list(grads)


def _target_scores(
    outputs: Any, target: common.Target, n: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """``(scores (N,) tensor in the graph, targets (N,) int64, logits (N, C) or None)``."""
    logits = _numpy(outputs) if torch.is_tensor(outputs) and outputs.ndim == 2 else None
    if callable(target):
        scores = target(outputs)
        if not torch.is_tensor(scores) or tuple(scores.shape) != (n,):
            shape = tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
            raise ValueError(
                f"the target function must return a tensor of shape ({n},), one score per image; got {shape}"
            )
        return scores, np.full(n, -1, dtype=np.int64), logits
    if not torch.is_tensor(outputs):
        raise ValueError(
            f"the model returned a {type(outputs).__name__}, not a tensor of class scores; "
            "give target= a callable that maps the output to one score per image"
        )
    targets = common.class_targets(target, logits if logits is not None else _numpy(outputs))
    index = torch.as_tensor(targets, device=outputs.device)[:, None]
    return outputs.gather(1, index)[:, 0], targets, logits


def _make_probe(
    capture: _Capture,
    gradients: list[torch.Tensor],
    scores: torch.Tensor,
    targets: np.ndarray,
    logits: np.ndarray | None,
    xt: torch.Tensor,
    reshape: Reshape | None,
) -> Probe:
    names = capture.names
    return Probe(
        activations={n: common.canonical_map(n, _numpy(t), reshape) for n, t in zip(names, capture.tensors())},
        gradients={n: common.canonical_map(n, _numpy(g), reshape) for n, g in zip(names, gradients)},
        scores=_numpy(scores),
        targets=targets,
        logits=logits,
        input_size=(int(xt.shape[-2]), int(xt.shape[-1])),
        layers=list(names),
    )


def _resolve_layers(model: torch.nn.Module, specs: list[Any]) -> tuple[list[str], list[torch.nn.Module]]:
    """Names and modules of the requested layers, in the order given, without repeats."""
    resolved: dict[str, torch.nn.Module] = {}
    for spec in specs:
        name, module = _resolve_layer(model, spec)
        resolved.setdefault(name, module)
    return list(resolved), list(resolved.values())


def _resolve_layer(model: torch.nn.Module, spec: Any) -> tuple[str, torch.nn.Module]:
    if isinstance(spec, str):
        try:
            return spec, model.get_submodule(spec)
        except AttributeError:
            raise common.unknown_layer_error(spec, layer_names(model)) from None
    if isinstance(spec, torch.nn.Module):
        for name, module in model.named_modules():
            if module is spec and name:
                return name, module
        raise ValueError(
            f"the {type(spec).__name__} module given as a layer is not a submodule of this model; "
            "pass one of its submodules or a dotted name from layer_names(model)"
        )
    raise TypeError(f"a layer is a dotted name or a submodule of the model, got {type(spec).__name__}")


@contextlib.contextmanager
def _left_as_found(model: torch.nn.Module) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Yields a list for hook handles, inside ``no_grad``; on exit removes the hooks and restores
    grad mode (``no_grad`` restores what it found, also after a switch made inside it) and buffers.
    """
    saved_buffers = _buffer_snapshot(model) if _is_training(model) else []
    hooks: list[torch.utils.hooks.RemovableHandle] = []
    try:
        # the caller may be inside an inference_mode block, where no graph can be recorded at all
        with torch.inference_mode(False), torch.no_grad():
            yield hooks
    finally:
        for handle in hooks:
            handle.remove()
        _restore_buffers(saved_buffers)


@contextlib.contextmanager
def _parameters_frozen(model: torch.nn.Module) -> Iterator[None]:
    """Trainable parameters set to ``requires_grad=False`` for the duration, then set back.

    With the whole network in the graph (an input gradient), autograd then records nothing that only a
    parameter gradient would need; the input and layer gradients do not depend on it.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    try:
        for p in trainable:
            p.requires_grad_(False)
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


BufferRecord = tuple[torch.nn.Module, str, torch.Tensor, torch.Tensor]


def _buffer_snapshot(model: torch.nn.Module) -> list[BufferRecord]:
    # a forward in training mode updates running statistics; the explanation must not
    records = []
    for module in model.modules():
        for name, buffer in module._buffers.items():
            if buffer is not None:
                records.append((module, name, buffer, buffer.detach().clone()))
    return records


def _restore_buffers(records: list[BufferRecord]) -> None:
    with torch.no_grad():
        for module, name, buffer, value in records:
            buffer.copy_(value)
            module._buffers[name] = buffer


def _as_batch(model: torch.nn.Module, x: Any) -> torch.Tensor:
    """``x`` as a checked ``(N, C, H, W)`` tensor on the model's device, in its parameter dtype."""
    device, dtype = _placement(model, x)
    if torch.is_tensor(x):
        xt = x.detach()
        if xt.is_inference():
            with torch.inference_mode(False):
                xt = xt.clone()
    else:
        xt = torch.from_numpy(np.ascontiguousarray(x))
    if xt.ndim != 4:
        hint = " (add the batch dimension: x[None])" if xt.ndim == 3 else ""
        raise ValueError(f"expected a batch of images (N, C, H, W), got shape {tuple(xt.shape)}{hint}")
    xt = xt.to(device=device, dtype=dtype)
    if not bool(torch.isfinite(xt).all()):
        # only on failure is the input copied to the host, for the shared message
        common.check_input(_numpy(xt))
    return xt


def _placement(model: torch.nn.Module, x: Any) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first floating parameter or buffer."""
    for tensor in _parameters_then_buffers(model):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    if torch.is_tensor(x) and x.is_floating_point():
        return x.device, x.dtype
    return (x.device if torch.is_tensor(x) else torch.device("cpu")), torch.float32


def _parameters_then_buffers(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float32).numpy()


def _shares_storage(output: torch.Tensor, inputs: Any) -> bool:
    pointer = output.untyped_storage().data_ptr()
    return any(torch.is_tensor(i) and i.untyped_storage().data_ptr() == pointer for i in inputs)


def _is_spatial(shape: tuple[int, ...]) -> bool:
    return len(shape) == 4 and shape[2] > 1 and shape[3] > 1


def _is_training(model: torch.nn.Module) -> bool:
    return any(module.training for module in model.modules())


def _require_module(model: Any) -> None:
    if not is_model(model):
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        raise TypeError(f"the torch backend explains a torch.nn.Module, got {kind}")


def _positive(value: int, what: str) -> int:
    if int(value) < 1:
        raise ValueError(f"{what} must be a positive integer, got {value!r}")
    return int(value)
