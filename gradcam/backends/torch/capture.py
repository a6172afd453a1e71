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
* A layer's *input* (``at="input"``) is taken by a forward pre-hook on its first positional argument, by the
  same rules: the graph starts there, and an input edited in place later runs the forward again with copies.
  The layer gets a node of its own (a fresh leaf, or a copy once the graph has started), so ``G`` is the
  gradient along the paths through this layer: where other layers read the same tensor (a residual's
  shortcut), their paths do not count, as in the Keras and JAX backends.
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
    """Forward hooks that record the requested layers' outputs (``at="output"``) or inputs (``at="input"``, their
    first positional argument), the first one starting the graph."""

    def __init__(
        self, names: list[str], modules: list[torch.nn.Module], copy_outputs: bool = True, at: str = "output"
    ) -> None:
        common.check_at(at)
        self.names = names
        self.copy_outputs = copy_outputs
        self.at = at
        self.names_of: dict[torch.nn.Module, list[str]] = {}
        for name, module in zip(names, modules, strict=True):
            self.names_of.setdefault(module, []).append(name)
        self.outputs: dict[str, torch.Tensor] = {}
        self.versions: dict[str, int] = {}

    def attach(self) -> list[torch.utils.hooks.RemovableHandle]:
        """One forward hook (a pre-hook for inputs) per distinct module; the caller removes the handles."""
        if self.at == "input":
            return [module.register_forward_pre_hook(self._input_hook) for module in self.names_of]
        return [module.register_forward_hook(self._hook) for module in self.names_of]

    def _input_hook(self, module: torch.nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        names = self.names_of[module]
        if not inputs or not torch.is_tensor(inputs[0]):
            found = type(inputs[0]).__name__ if inputs else "no positional argument"
            raise TypeError(
                f"layer {names[0]!r} is called with {found} first, not a tensor; choose a module whose input is one "
                "tensor"
            )
        # a copy once the graph has started (the layer's own node), and in the second forward: the caller still
        # holds the input, and a later in-place edit of it would otherwise reach the recorded values
        own = inputs[0].clone() if inputs[0].requires_grad or self.copy_outputs else inputs[0]
        return (self._captured(names, own), *inputs[1:])

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
        return self._captured(names, output)

    def _captured(self, names: list[str], tensor: torch.Tensor) -> torch.Tensor:
        """Record ``tensor`` for ``names`` (the graph starts at it if none has yet) and give what is handed on."""
        if not tensor.requires_grad:
            # the graph starts here: nothing before this layer was recorded
            torch.set_grad_enabled(True)
            tensor = tensor.detach().requires_grad_()
        for name in names:
            self.outputs[name] = tensor
            self.versions[name] = tensor._version
        return tensor.clone() if self.copy_outputs else tensor

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


class NeuronOutput:
    """The output of a ``gradcam.targets.Neuron`` target's layer, recorded in the explaining forward, and the
    target as a function of the model's outputs that scores it (any other target passes through unchanged).

    The layer is only watched: its output is scored where it lies in the graph, which starts at the explained
    layers, so a unit before them reaches no explained layer (``score_independent_of`` then says so).
    """

    def __init__(self, target: common.Target, module: torch.nn.Module | None) -> None:
        self.neuron, self.module = (target, module) if module is not None else (None, None)
        self.output: torch.Tensor | None = None
        self.target: common.Target = target if module is None else self._score

    def attach(self) -> list[torch.utils.hooks.RemovableHandle]:
        """The hook on the neuron's layer (none for another target); the caller removes it."""
        return [self.module.register_forward_hook(self._hook)] if self.module is not None else []

    def _hook(self, module: torch.nn.Module, inputs: Any, output: Any) -> None:
        if not torch.is_tensor(output):
            raise TypeError(f"the Neuron target's layer returns a {type(output).__name__}, not a tensor")
        self.output = output  # its last call, as for the explained layers

    def _score(self, outputs: Any) -> torch.Tensor:
        if self.output is None:
            raise common.layers_did_not_run([str(self.neuron.layer)])
        return self.neuron.layer_score(self.output, channel_axis=1)


# autograd's message when an operation edits in place the leaf a hook handed on (torch 2.x)
_LEAF_EDITED = "a leaf Variable that requires grad is being used in an in-place operation"


def forward_capturing(
    model: torch.nn.Module,
    x: torch.Tensor,
    names: list[str],
    modules: list[torch.nn.Module],
    at: str = "output",
    neuron: NeuronOutput | None = None,
) -> tuple[Capture, Any]:
    """``model(x)`` with ``names`` captured (their outputs, or inputs for ``at="input"``), inside
    ``left_as_found``; run a second time with copies handed on when the first forward edited a captured tensor
    in place (the module's docstring says why). A ``neuron``'s layer is watched after the capture's hooks, so
    that it sees what they hand on (the graph's tensor when it is an explained layer too)."""
    capture = Capture(names, modules, copy_outputs=False, at=at)
    try:
        outputs = _hooked_forward(model, x, capture, neuron)
        if not capture.edited_in_place():
            return capture, outputs
    except RuntimeError as error:
        if _LEAF_EDITED not in str(error):
            raise
    capture = Capture(names, modules, copy_outputs=True, at=at)
    return capture, _hooked_forward(model, x, capture, neuron)


def _hooked_forward(model: torch.nn.Module, x: torch.Tensor, capture: Capture, neuron: NeuronOutput | None) -> Any:
    torch.set_grad_enabled(False)  # the graph starts at the first hook, in each forward
    handles = capture.attach() + (neuron.attach() if neuron is not None else [])
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
