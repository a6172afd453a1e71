"""Forward hooks that capture layer outputs with the graph starting at the earliest one, and the model left as found.

Why this module exists (DESIGN.md sections 5 and 7):

* Grad-CAM should cost one inference. The forward runs under ``no_grad``; the forward hook of the
  first requested layer to fire switches grad mode on for the rest of that forward and hands on a
  fresh leaf, so nothing before the earliest layer records a graph.
* An in-place operation downstream (an ``inplace=True`` ReLU after a batch norm) must change neither the
  captured values nor their place in the graph. A hook hands on the tensor it captured and records its
  version counter; a forward that edited one (its version moved, or autograd refused to edit a leaf in
  place) is run again with hooks that hand on a *copy* (``copy_outputs``). Copying every time cost 0.04 ms
  per image on a 2048 x 7 x 7 layer (a 25 MB copy per batch of 64), a sixth of the library's own work there;
  the second forward is paid only by the models that edit the layer's output.
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

    def __init__(self, names: list[str], modules: list[torch.nn.Module], copy_outputs: bool = True) -> None:
        self.names = names
        self.copy_outputs = copy_outputs
        self.names_of: dict[torch.nn.Module, list[str]] = {}
        for name, module in zip(names, modules, strict=True):
            self.names_of.setdefault(module, []).append(name)
        self.outputs: dict[str, torch.Tensor] = {}
        self.versions: dict[str, int] = {}

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
            self.versions[name] = output._version
        return output.clone() if self.copy_outputs else output

    def edited_in_place(self) -> bool:
        """Whether the forward changed a captured output in place after its hook (its version moved)."""
        return any(self.outputs[name]._version != version for name, version in self.versions.items())

    def check_all_ran(self) -> None:
        """A ``RuntimeError`` naming the requested layers that the forward never called."""
        missing = [name for name in self.names if name not in self.outputs]
        if missing:
            raise common.layers_did_not_run(missing)

    def tensors(self) -> list[torch.Tensor]:
        """The captured outputs, in the order the layers were requested."""
        return [self.outputs[name] for name in self.names]


# autograd's message when an operation edits in place the leaf a hook handed on (torch 2.x)
_LEAF_EDITED = "a leaf Variable that requires grad is being used in an in-place operation"


def forward_capturing(
    model: torch.nn.Module, x: torch.Tensor, names: list[str], modules: list[torch.nn.Module]
) -> tuple[Capture, Any]:
    """``model(x)`` with ``names`` captured, inside ``left_as_found``; run a second time with copies handed on
    when the first forward edited a captured output in place (the module's docstring says why)."""
    capture = Capture(names, modules, copy_outputs=False)
    try:
        outputs = _hooked_forward(model, x, capture)
        if not capture.edited_in_place():
            return capture, outputs
    except RuntimeError as error:
        if _LEAF_EDITED not in str(error):
            raise
    capture = Capture(names, modules, copy_outputs=True)
    return capture, _hooked_forward(model, x, capture)


def _hooked_forward(model: torch.nn.Module, x: torch.Tensor, capture: Capture) -> Any:
    torch.set_grad_enabled(False)  # the graph starts at the first hook, in each forward
    handles = capture.attach()
    try:
        return model(x)
    finally:
        for handle in handles:
            handle.remove()


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
