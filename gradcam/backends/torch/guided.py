"""Guided Backprop and Deconvnet for PyTorch: the ReLU backward rewritten for one call, nothing global changed.

Why this module exists (DESIGN.md sections 5 and 7): those rules change the backward of every ReLU,
and a model's ReLUs are not only ``nn.ReLU`` modules that could be swapped: ``F.relu``,
``torch.relu``, ``Tensor.relu`` and the in-place ``relu_`` are plain calls inside ``forward``. A
``TorchFunctionMode`` sees every one of them during the forward and puts a hook on its backward
node that rewrites the gradient, and only while the rule's own backward runs (``active``). The
model and torch's ReLU stay as they are, so a plain gradient taken from the same graph (the layer
gradients of Guided Grad-CAM) stays plain.

A hook that clamps the incoming gradient was measured cheaper than a custom autograd ReLU
(DESIGN.md section 7); a hook on the node serves both rules.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_RELU_OUT_OF_PLACE = {torch.relu, torch.Tensor.relu, torch.nn.functional.relu}
_RELU_IN_PLACE = {torch.relu_, torch.Tensor.relu_}


class ReluRule(TorchFunctionMode):
    """Sees every ReLU of a forward and hooks its backward node to apply ``rule`` while ``active``.

    The hook rewrites what the ReLU node hands back: guided keeps ``grad_in`` (the plain
    ``g * [input > 0]``) where it is > 0; deconvnet passes ``max(g, 0)`` whatever the input's sign.
    An in-place ReLU on a view is run out of place and copied back, because autograd folds an
    in-place op on a view into a node of the base tensor, where the ReLU node cannot be reached.
    """

    def __init__(self, rule: str) -> None:
        super().__init__()
        self.rule = rule
        self.active = False
        self.count = 0  # ReLUs of the forward whose backward the rule rewrites

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
            self.count += 1
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
