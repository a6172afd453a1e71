"""PyTorch backend: activations and gradients of a ``torch.nn.Module`` as NumPy arrays.

Why it is built this way (DESIGN.md sections 5 and 7):

* Grad-CAM should cost one inference. ``probe`` runs one forward under ``no_grad`` in which the
  hook of the earliest requested layer starts the graph (``capture``). The gradients come from
  ``torch.autograd.grad(scores, activations)``, which walks only the edges that lead to the
  activations: the backward stops at the layer and no parameter gradient is ever formed.
* Targets are resolved before any compute: their type and count before the forward, their range
  against the model's output right after it, before the backward (``common.requested_classes``,
  ``common.class_targets``).
* Guided Backprop and Deconvnet change the ReLU backward for one call only (``guided``); the model
  is left as found, also after an error (``capture.left_as_found``).

This module holds the contract (``gradcam.backends.contract.Backend``) and what only its functions
need: the input as a tensor where the model lives, the layers by name or module, the target scores.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from gradcam.backends import choice, common, layouts
from gradcam.backends import inputs as multi
from gradcam.backends.probe import InputGradient, Probe
from gradcam.backends.torch.capture import (
    Capture,
    NeuronOutput,
    forward_capturing,
    is_training,
    left_as_found,
    parameters_frozen,
)
from gradcam.backends.torch.guided import ReluRule
from gradcam.backends.torch.inputs import (
    grid_size,
    host_array,
    model_inputs,
    require_module,
    resolve_layer,
    resolve_layers,
)
from gradcam.backends.torch.wrappers import dependence_score, explained_model

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

NAME = "torch"

# layers that only resample their input's map (the layer choice passes over them when they do not shrink it)
_RESAMPLING = (
    torch.nn.AdaptiveAvgPool2d,
    torch.nn.AdaptiveMaxPool2d,
    torch.nn.Upsample,
    torch.nn.UpsamplingBilinear2d,
    torch.nn.UpsamplingNearest2d,
)


def is_model(model: Any) -> bool:
    """Whether ``model`` is a ``torch.nn.Module``."""
    return isinstance(model, torch.nn.Module)


def to_numpy(x: Any) -> np.ndarray:
    """The (explained) input batch as float32 NumPy ``(N, C, H, W)`` (a tensor is moved to the host)."""
    x = multi.explained(x)
    if torch.is_tensor(x):
        return host_array(x)
    return np.asarray(x, dtype=np.float32)


def input_channel_axis(model: Any) -> int:
    """The colour-channel axis of the model's input: always 1, a torch model takes ``(N, C, H, W)``."""
    return 1


def layer_names(model: torch.nn.Module) -> list[str]:
    """Dotted names of all submodules, as ``named_modules()`` lists them, the root excluded."""
    require_module(model)
    return [name for name, _ in model.named_modules() if name]


def layer_shapes(model: torch.nn.Module, x: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Each submodule's output shape for input ``x``, in execution order (one forward, no graph).

    A module's place in the order is where its forward *finished* (so a block comes after its
    children) at its last call; modules whose output is not a tensor are left out.
    """
    require_module(model)
    return _recorded_shapes(model, *model_inputs(model, x))[0]


def _recorded_shapes(
    model: torch.nn.Module, xt: torch.Tensor, inputs: multi.Inputs
) -> tuple[list[tuple[str, tuple[int, ...]]], tuple[int, ...] | None]:
    """``layer_shapes``, and the shape of the model's output (``None`` when it is not one tensor)."""
    shapes: dict[str, tuple[int, ...]] = {}

    def record(name: str) -> Callable[..., None]:
        def hook(module: torch.nn.Module, inputs: Any, output: Any) -> None:
            if torch.is_tensor(output):
                shapes.pop(name, None)
                shapes[name] = tuple(output.shape)

        return hook

    with left_as_found(model) as hooks:
        for name, module in model.named_modules():
            if name:
                hooks.append(module.register_forward_hook(record(name)))
        output = inputs.call(model, xt)
    return list(shapes.items()), tuple(output.shape) if torch.is_tensor(output) else None


def layer_choice(model: torch.nn.Module, x: Any) -> choice.LayerChoice:
    """The automatic layer for inputs shaped like ``x``, by the rule of ``gradcam.backends.choice``.

    One image of ``x`` is enough (the whole batch when the model is in training mode, where batch statistics
    may need more than one image): one forward lists the layers, and one probe per layer tried says whether
    the score depends on it (usually the last candidate, so one).
    """
    require_module(model)
    xt, inputs = model_inputs(model, x)
    sample, sample_inputs = (xt, inputs) if is_training(model) else (xt[:1], inputs.take(slice(0, 1)))
    modules = dict(model.named_modules())
    shapes, output_shape = _recorded_shapes(model, sample, sample_inputs)
    infos = [
        choice.LayerInfo(
            name,
            shape,
            "NCHW",
            weighted=any(True for _ in modules[name].parameters()),
            normalization="Norm" in type(modules[name]).__name__,
            resamples=isinstance(modules[name], _RESAMPLING),
        )
        for name, shape in shapes
    ]

    def depends(name: str) -> bool:
        n = sample.shape[0]
        # the top-1 class (the default target) for class scores; else the sum of every output
        target = None if output_shape is not None and len(output_shape) == 2 else lambda out: dependence_score(out, n)
        try:
            found = probe(model, sample_inputs.replaced(sample), name, target=target)
        except common.ScoreIndependentError:
            return False
        return bool(np.any(found.gradients[name] != 0))

    size = grid_size(xt)
    return choice.choose(infos, size, int(sample.shape[0]), depends, output_shape)


def default_layer(model: torch.nn.Module, x: Any) -> str:
    """The automatic layer for inputs shaped like ``x``: ``layer_choice(model, x).name``."""
    return layer_choice(model, x).name


def dense_weight(model: torch.nn.Module, layer: Any) -> np.ndarray:
    """The ``(classes, inputs)`` weight matrix of an ``nn.Linear`` layer (for CAM), as float32."""
    require_module(model)
    name, module = resolve_layer(model, layer)
    if not isinstance(module, torch.nn.Linear):
        raise ValueError(f"layer {name!r} is a {type(module).__name__}, not a Linear layer")
    return host_array(module.weight).copy()


# layers whose output is a linear map of the input plus a bias per output channel (for FullGrad)
_BIASED = (
    torch.nn.Linear,
    torch.nn.Conv1d,
    torch.nn.Conv2d,
    torch.nn.Conv3d,
    torch.nn.ConvTranspose1d,
    torch.nn.ConvTranspose2d,
    torch.nn.ConvTranspose3d,
)
_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d, torch.nn.SyncBatchNorm)


def layer_biases(model: torch.nn.Module, x: Any) -> list[tuple[str, np.ndarray]]:
    """``(name, bias (C,) float32)`` of every conv, ``Linear`` and batch-norm module with a bias, in
    ``named_modules()`` order (``x`` is not needed: the modules are listed without running the model).

    Batch norm in eval mode computes ``gamma (x - mean) / sqrt(var + eps) + beta``: a linear map plus the bias
    ``beta - gamma * mean / sqrt(var + eps)`` (``gamma = 1``, ``beta = 0`` without ``affine``). In training mode,
    or without running statistics, it normalizes with the batch's own statistics and has no fixed bias: refused.
    """
    require_module(model)
    found = []
    for name, module in model.named_modules():
        if isinstance(module, _BATCH_NORMS):
            found.append((name, _batch_norm_bias(name, module)))
        elif isinstance(module, _BIASED) and module.bias is not None:
            found.append((name, host_array(module.bias).copy()))
    return found


def _batch_norm_bias(name: str, bn: torch.nn.Module) -> np.ndarray:
    if bn.training or bn.running_mean is None:
        raise ValueError(
            f"batch norm {name!r} normalizes with the batch's own statistics (training mode or "
            "track_running_stats=False), so it adds no fixed bias; put the model in eval mode (model.eval())"
        )
    mean = host_array(bn.running_mean).astype(np.float64)
    scale = 1.0 / np.sqrt(host_array(bn.running_var).astype(np.float64) + bn.eps)
    gamma = host_array(bn.weight).astype(np.float64) if bn.weight is not None else 1.0
    beta = host_array(bn.bias).astype(np.float64) if bn.bias is not None else 0.0
    return (beta - gamma * mean * scale).astype(np.float32)


def predict(model: torch.nn.Module, x: Any, batch_size: int | None = None) -> np.ndarray:
    """The model's outputs ``(N, ...)`` as float32 NumPy, forward only (under ``no_grad``).

    ``batch_size`` splits the batch into chunks of at most that many images. The batch goes to the
    model's device once and is split there (views, no copies), rather than chunked as NumPy on the host.
    """
    require_module(model)
    xt, inputs = model_inputs(model, x)
    n = int(xt.shape[0])
    size = n if batch_size is None else common.positive_int(batch_size, "batch_size")
    outputs = []
    with left_as_found(model):
        for start in range(0, n, size):
            rows = slice(start, start + size)
            out = inputs.take(rows).call(model, xt[rows])
            if not torch.is_tensor(out):
                raise TypeError(
                    f"the model returned a {type(out).__name__}, not a tensor; predict needs a model "
                    "whose output is one tensor (wrap it to select the output)"
                )
            outputs.append(host_array(out))
    return np.concatenate(outputs, axis=0)


def predict_ablated(
    model: torch.nn.Module, x: Any, layer: Any, channels: Any, reshape: common.Reshape | None = None
) -> np.ndarray:
    """The model's outputs ``(N, ...)`` with channel ``channels[n]`` of ``layer``'s output set to zero for
    image ``n`` (``-1``: nothing zeroed), forward only; the model is not changed.

    Channels count as in the probe's ``(N, K, h, w)`` arrays: the layer's output is read with the layout
    ``reshape`` names (``None``: inferred, as the probe does), so a channels-last map or tokens lose a channel,
    not a row or a token (special tokens keep theirs). A layer that runs more than once in one forward is
    refused: which of its calls to ablate would be a guess.
    """
    require_module(model)
    xt, inputs = model_inputs(model, x)
    (name,), (module,) = resolve_layers(model, [layer])
    chosen = torch.as_tensor(np.asarray(channels, dtype=np.int64).reshape(-1), device=xt.device)
    if chosen.shape[0] != xt.shape[0]:
        raise ValueError(f"got {chosen.shape[0]} channels for a batch of {xt.shape[0]} images; give one per image")
    rows = torch.nonzero(chosen >= 0).flatten()
    size = grid_size(xt)
    calls = []

    def zero_channels(_module: torch.nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
        calls.append(name)
        if len(calls) > 1:
            raise common.ambiguous_ablation(name)
        axis, first = common.ablation_axis(name, tuple(output.shape), reshape, "NCHW", size, int(xt.shape[0]))
        ablated = output.clone()
        # a view with the channels on axis 1: (N, K, h, w) for maps, (N, K, T) for tokens
        ablated.movedim(axis, 1)[rows, chosen[rows], first:] = 0
        return ablated

    with left_as_found(model) as hooks, torch.no_grad():
        hooks.append(module.register_forward_hook(zero_channels))
        out = inputs.call(model, xt)
    if not torch.is_tensor(out):
        raise TypeError(
            f"the model returned a {type(out).__name__}, not a tensor; predict_ablated needs a model whose output "
            "is one tensor (wrap it to select the output)"
        )
    return host_array(out)


def probe(
    model: torch.nn.Module,
    x: Any,
    layers: Any,
    target: common.Target = None,
    reshape: common.Reshape | None = None,
    at: str = "output",
) -> Probe:
    """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one backward.

    Parameters
    ----------
    model
        Any ``torch.nn.Module``, explained in the train/eval mode it is in.
    x
        ``(N, C, H, W)`` tensor (any device) or NumPy array (signals ``(N, C, L)``, volumes and clips
        ``(N, C, D, H, W)``); moved to the model's device and dtype. A model with several inputs takes a tuple
        (``model(*x)``), a dict (``model(**x)``) or a ``gradcam.backends.inputs.Inputs`` naming the explained one,
        whose grid the maps have.
    layers
        A dotted name (``"layer4"``, ``"layer4.1.conv2"``), a module of the model, or a non-empty
        list of them; ``default_layer(model, x)`` gives the default.
    target
        ``None`` (top-1 class per image), an int, one int per image, or a callable
        ``f(outputs) -> (N,)`` tensor. The gradient is that of ``sum_n y_n``.
    reshape
        How each layer's output is read as ``(N, K, h, w)``: a layout name (``"NCHW"``, ``"NHWC"``, ``"NTC:1"``
        for ViT tokens; ``gradcam.backends.layouts``), a function on the NumPy array, or ``None`` to infer the
        layout from the output's shape (refused, with the reason, when it is unclear).
    at
        ``"output"`` (the papers' ``A``) or ``"input"``: each layer's input (its first positional argument) and the
        gradient at it, read by ``reshape`` as outputs are.

    Raises
    ------
    ValueError
        No layer given, a bad input or target, or a layer output that is not a map in a known layout (or
        whose first dimension is not the batch).
    """
    require_module(model)
    xt, inputs = model_inputs(model, x)
    specs = common.required_layers(layers)
    names, modules = resolve_layers(model, specs)
    # type and count of the target now; its range once the forward has given the number of classes
    common.requested_classes(target, xt.shape[0])
    common.check_at(at)
    neuron = _neuron_output(model, target)
    with left_as_found(model):
        capture, outputs = forward_capturing(
            lambda batch: inputs.call(model, batch), xt, names, modules, at, neuron
        )
        torch.set_grad_enabled(True)
        capture.check_all_ran()
        scores, targets, logits = _target_scores(outputs, neuron.target, xt.shape[0])
        gradients = _gradients(scores, capture.tensors(), names)
    try:
        return _make_probe(capture, gradients, scores, targets, logits, xt, reshape)
    except layouts.LayoutError as error:
        raise common.with_better_layer(error, lambda: default_layer(model, inputs.replaced(xt))) from None


def input_gradient(
    model: torch.nn.Module,
    x: Any,
    target: common.Target = None,
    rule: str = "plain",
    layers: Any = None,
    reshape: common.Reshape | None = None,
) -> InputGradient:
    """``d y / d x`` ``(N, C, H, W)`` float32 (``(N, C, *grid)``), with the ReLU backward given by ``rule``; with
    several inputs (``probe``'s ``x``), the gradient with respect to the explained one only.

    ``rule``: ``"plain"`` (ordinary gradient); ``"guided"`` (Guided Backprop: a ReLU passes the
    gradient only where its input > 0 AND the incoming gradient > 0); ``"deconvnet"`` (only where
    the incoming gradient > 0). With ``layers``, the same forward also captures those layers, and
    ``result.probe`` holds their activations and *plain* gradients (Guided Grad-CAM): the rule is
    switched on only for the second backward, the one that reaches the input.
    """
    common.check_rule(rule)
    require_module(model)
    xt, inputs = model_inputs(model, x)
    names, modules = resolve_layers(model, common.layer_list(layers))
    common.requested_classes(target, xt.shape[0])
    capture = Capture(names, modules)
    neuron = _neuron_output(model, target)
    relu_rule = ReluRule(rule) if rule != "plain" else None
    with left_as_found(model) as hooks, parameters_frozen(model):
        hooks.extend(capture.attach() + neuron.attach())
        torch.set_grad_enabled(True)
        x_leaf = xt.detach().requires_grad_()
        # a copy goes in, so that a model editing its input in place neither fails on the leaf
        # nor changes the caller's tensor
        with relu_rule or contextlib.nullcontext():
            outputs = inputs.call(model, x_leaf.clone())
        capture.check_all_ran()
        scores, targets, logits = _target_scores(outputs, neuron.target, xt.shape[0])
        layer_gradients = _gradients(scores, capture.tensors(), names, keep_graph=True) if names else []
        if relu_rule is not None:
            relu_rule.active = True
        (gradient,) = _gradients(scores, [x_leaf], ["input"])
    layer_probe = _make_probe(capture, layer_gradients, scores, targets, logits, xt, reshape) if names else None
    return InputGradient(
        gradient=host_array(gradient),
        scores=host_array(scores),
        targets=targets,
        logits=logits,
        probe=layer_probe,
        relu_count=relu_rule.count if relu_rule is not None else -1,
    )


def _neuron_output(model: torch.nn.Module, target: common.Target) -> NeuronOutput:
    """What scores ``target``: a ``Neuron``'s layer watched in the forward, any other target as it is."""
    unit = common.unit_target(target)
    return NeuronOutput(target, resolve_layers(model, [unit.layer])[1][0] if unit is not None else None)


def _gradients(
    scores: torch.Tensor, tensors: list[torch.Tensor], names: list[str], keep_graph: bool = False
) -> list[torch.Tensor]:
    """``d sum(scores) / d tensors`` without forming any other gradient; clear errors if unreachable."""
    if not scores.requires_grad:
        raise common.score_independent_of(names)
    # a scalar root: with a vector root and grad_outputs, the first backward left ~37 MiB more
    # resident memory behind on a ResNet-50 at batch 8 (torch 2.13 and 2.14, CPU)
    grads = torch.autograd.grad(scores.sum(), tensors, retain_graph=keep_graph, allow_unused=True)
    unused = [name for name, grad in zip(names, grads, strict=True) if grad is None]
    if unused:
        raise common.score_independent_of(
            unused, "; in PyTorch this is typically a module that works in place and whose return value the model "
            "ignores, or a value the model detaches (a detector's proposals)"
        )
    return list(grads)


def _target_scores(
    outputs: Any, target: common.Target, n: int
) -> tuple[torch.Tensor, np.ndarray, np.ndarray | None]:
    """``(scores (N,) tensor in the graph, targets (N,) int64, logits (N, C) or None)``."""
    logits = host_array(outputs) if torch.is_tensor(outputs) and outputs.ndim == 2 else None
    if callable(target):
        scores = target(outputs)
        if not torch.is_tensor(scores) or tuple(scores.shape) != (n,):
            raise common.target_function_shape_error(
                n, tuple(scores.shape) if torch.is_tensor(scores) else type(scores).__name__
            )
        return scores, np.full(n, common.TOP1, dtype=np.int64), logits
    if not torch.is_tensor(outputs):
        raise ValueError(
            f"the model returned a {type(outputs).__name__}, not a tensor of class scores; pass output= to explain "
            "one of its entries, or give target= a callable that maps the output to one score per image"
        )
    targets = common.class_targets(target, logits if logits is not None else host_array(outputs))
    index = torch.as_tensor(targets, device=outputs.device)[:, None]
    return outputs.gather(1, index)[:, 0], targets, logits


def _make_probe(
    capture: Capture,
    gradients: list[torch.Tensor],
    scores: torch.Tensor,
    targets: np.ndarray,
    logits: np.ndarray | None,
    xt: torch.Tensor,
    reshape: common.Reshape | None,
) -> Probe:
    names = capture.names
    size, n = grid_size(xt), int(xt.shape[0])
    activations, layer_gradients, read_as = {}, {}, {}
    for name, tensor, gradient in zip(names, capture.tensors(), gradients, strict=True):
        activations[name], read_as[name] = common.read_map(name, host_array(tensor), reshape, "NCHW", size, n)
        layer_gradients[name], _ = common.read_map(name, host_array(gradient), reshape, "NCHW", size, n)
    return Probe(
        activations=activations,
        gradients=layer_gradients,
        scores=host_array(scores),
        targets=targets,
        logits=logits,
        input_size=size,
        layers=list(names),
        layouts=read_as,
    )
