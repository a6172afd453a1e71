"""What every function of the torch backend does first: the input as a checked tensor where the model lives,
the requested layers by dotted name or module, and tensors back to NumPy.

Why this file exists: these are the same few lines at the top of every contract function (``__init__``), and
the one place where the model's device and dtype are read (its first floating parameter or buffer).
"""
from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from gradcam.backends import common
from gradcam.backends import inputs as multi


def resolve_layers(model: torch.nn.Module, specs: list[Any]) -> tuple[list[str], list[torch.nn.Module]]:
    """Names and modules of the requested layers, in the order given, without repeats."""
    resolved: dict[str, torch.nn.Module] = {}
    for spec in specs:
        name, module = resolve_layer(model, spec)
        resolved.setdefault(name, module)
    return list(resolved), list(resolved.values())


def resolve_layer(model: torch.nn.Module, spec: Any) -> tuple[str, torch.nn.Module]:
    """The dotted name and module of one requested layer (a name or a submodule); the closest names if unknown."""
    if isinstance(spec, str):
        try:
            return spec, model.get_submodule(spec)
        except AttributeError:
            raise common.unknown_layer_error(spec, [name for name, _ in model.named_modules() if name]) from None
    if isinstance(spec, torch.nn.Module):
        for name, module in model.named_modules():
            if module is spec and name:
                return name, module
        raise ValueError(
            f"the {type(spec).__name__} module given as a layer is not a submodule of this model; "
            "pass one of its submodules or a dotted name from layer_names(model)"
        )
    raise TypeError(f"a layer is a dotted name or a submodule of the model, got {type(spec).__name__}")


def as_batch(model: torch.nn.Module, x: Any) -> torch.Tensor:
    """``x`` as a checked ``(N, C, *grid)`` tensor on the model's device, in its parameter dtype: ``(N, C, H, W)``
    images, ``(N, C, L)`` signals, ``(N, C, D, H, W)`` volumes, as the model's first convolution takes."""
    device, dtype = placement(model, x)
    if torch.is_tensor(x):
        xt = x.detach()
        if xt.is_inference():
            with torch.inference_mode(False):
                xt = xt.clone()
    else:
        xt = torch.from_numpy(np.ascontiguousarray(x))
    xt = xt.to(device=device, dtype=dtype)
    # a finite sum proves every value finite (NaN and infinities propagate into it) at a fraction of the cost
    # of an elementwise check; only a sum that overflowed needs the full check
    grid = model_grid(model)
    ranks = (grid + 2,) if grid else (3, 4, 5)
    if xt.ndim not in ranks or not (bool(torch.isfinite(xt.sum())) or bool(torch.isfinite(xt).all())):
        # only on failure is the input copied to the host, for the shared message
        common.checked_batch(host_array(xt), common.input_layout(grid, 1), grid)
    return xt


def model_inputs(model: torch.nn.Module, x: Any) -> tuple[torch.Tensor, multi.Inputs]:
    """The explained input of ``x`` as ``as_batch`` gives it, and all of ``x``'s inputs (``gradcam.backends.inputs``)
    with every other one a tensor on the model's device: ``inputs.call(model, xt)`` runs the model.

    The other inputs keep their dtype unless floating (then the model's): token ids stay integers."""
    inputs = multi.read(x)
    xt = as_batch(model, inputs.explained)
    return xt, inputs.converted(lambda part: _other_input(part, xt))


def _other_input(part: Any, xt: torch.Tensor) -> torch.Tensor:
    tensor = part.detach() if torch.is_tensor(part) else torch.as_tensor(np.asarray(part))
    if tensor.is_inference():  # as for the explained input: an inference tensor cannot join a graph
        with torch.inference_mode(False):
            tensor = tensor.clone()
    dtype = xt.dtype if tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=xt.device, dtype=dtype)


def grid_size(xt: torch.Tensor) -> tuple[int, ...]:
    """The grid of a channels-first batch ``(N, C, *grid)``: ``(H, W)``, ``(L,)`` or ``(D, H, W)``."""
    return tuple(int(v) for v in xt.shape[2:])


def model_grid(model: torch.nn.Module) -> int | None:
    """The number of grid axes the model's input has, read from its first convolution (1 for ``Conv1d``, 2 for
    ``Conv2d``, 3 for ``Conv3d``); ``None`` for a model without one (any grid of 1 to 3 axes is taken)."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.conv._ConvNd):
            return len(module.kernel_size)
    return None


def placement(model: torch.nn.Module, x: Any) -> tuple[torch.device, torch.dtype]:
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


def host_array(t: torch.Tensor) -> np.ndarray:
    """``t`` as float32 NumPy on the host, out of any graph."""
    return t.detach().to("cpu", torch.float32).numpy()


def require_module(model: Any) -> None:
    """A ``TypeError`` naming the type unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        kind = f"{type(model).__module__}.{type(model).__qualname__}"
        raise TypeError(f"the torch backend explains a torch.nn.Module, got {kind}")
