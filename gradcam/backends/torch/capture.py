"""Forward hooks that capture layer outputs with the graph starting at the earliest one, and the model left as found.

Why this module exists (DESIGN.md sections 5 and 7):

* Grad-CAM should cost one inference. The forward runs under ``no_grad``; the forward hook of the
  first requested layer to fire switches grad mode on for the rest of that forward and hands on a
  fresh leaf, so nothing before the earliest layer records a graph.
* Every hook hands on a *copy* of the output it captured, so an in-place operation downstream (an
  ``inplace=True`` ReLU after a batch norm) can change neither the captured values nor their place
  in the graph.
* A layer called more than once in one forward (a ReLU module shared inside a block) is taken at
  its **last** call, the same rule ``layer_shapes`` and ``default_layer`` use.
* An input gradient records the whole network, so ``parameters_frozen`` sets the parameters'
  ``requires_grad`` off for the call (autograd then keeps nothing that only a parameter gradient
  needs) and back on after.
* The model is left as found (``left_as_found``): hooks removed, grad mode and ``requires_grad``
  restored, and, for a model in training mode, its buffers (batch-norm running statistics)
  restored; ``.training`` and ``.grad`` are never touched. Calling a model from two threads while it
  is being explained is not supported (the hooks live on the modules).
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from gradcam.backends import common

BufferRecord = tuple[torch.nn.Module, str, torch.Tensor, torch.Tensor]


class Capture:
    """Forward hooks that record the requested layers' outputs, the first one starting the graph."""

    def __init__(self, names: list[str], modules: list[torch.nn.Module]) -> None:
        self.names = names
        self.names_of: dict[torch.nn.Module, list[str]] = {}
        for name, module in zip(names, modules, strict=True):
            self.names_of.setdefault(module, []).append(name)
        self.outputs: dict[str, torch.Tensor] = {}

    def attach(self) -> list[torch.utils.hooks.RemovableHandle]:
        """One forward hook per distinct module; the caller removes the handles."""
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
        """A ``RuntimeError`` naming the requested layers that the forward never called."""
        missing = [name for name in self.names if name not in self.outputs]
        if missing:
            raise common.layers_did_not_run(missing)

    def tensors(self) -> list[torch.Tensor]:
        """The captured outputs, in the order the layers were requested."""
        return [self.outputs[name] for name in self.names]


@contextlib.contextmanager
def left_as_found(model: torch.nn.Module) -> Iterator[list[torch.utils.hooks.RemovableHandle]]:
    """Yields a list for hook handles, inside ``no_grad``; on exit removes the hooks and restores
    grad mode (``no_grad`` restores what it found, also after a switch made inside it) and buffers.
    """
    saved_buffers = _buffer_snapshot(model) if is_training(model) else []
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
def parameters_frozen(model: torch.nn.Module) -> Iterator[None]:
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


def is_training(model: torch.nn.Module) -> bool:
    """Whether any module of ``model`` is in training mode (its forward may then update buffers)."""
    return any(module.training for module in model.modules())


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


def _shares_storage(output: torch.Tensor, inputs: Any) -> bool:
    pointer = output.untyped_storage().data_ptr()
    return any(torch.is_tensor(i) and i.untyped_storage().data_ptr() == pointer for i in inputs)
