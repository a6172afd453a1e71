"""The module a user hands over is not always the module to explain: wrappers, dataclass outputs, a final softmax.

Why this file exists (issue 14): forward hooks fire only in eager code, so a ``torch.compile``d module that has
already run never reports its layers ("layer did not run"); ``DataParallel`` scatters the batch over devices;
a Hugging Face model returns a ``ModelOutput`` dataclass, not a tensor of class scores; a model may return a
dict or tuple of which one entry is explained. ``explained_model`` turns each of these into the plain module the
hooks can see, with a note that says what was done, and keeps the layer names the user sees for the model as
given (``gradcam layers``): an ``OutputOf`` view lists its inner module's layers as its own.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Any

import torch

from gradcam.backends import common

_FINAL_PROBABILITY = (torch.nn.Softmax, torch.nn.Sigmoid)


class OutputOf(torch.nn.Module):
    """A view of ``inner`` that returns one selected output and may stop before a final ``nn.Sequential`` step.

    Its layers are ``inner``'s, under the same names (``named_modules`` and ``get_submodule`` are delegated), so
    hooks, parameters and buffers are those of the user's module; ``inner`` is not registered as a child.
    """

    def __init__(self, inner: torch.nn.Module, output: Any = None, drop_last: bool = False) -> None:
        super().__init__()
        object.__setattr__(self, "inner", inner)
        self.output = output
        self.drop_last = drop_last

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.drop_last:
            # an nn.Sequential without its final softmax: the same modules, called by the same names
            (x,) = args
            for module in list(self.inner.children())[:-1]:
                x = module(x)
            return x
        return select_output(self.inner(*args, **kwargs), self.output)

    def named_modules(self, memo: Any = None, prefix: str = "", remove_duplicate: bool = True) -> Any:
        return self.inner.named_modules(memo, prefix, remove_duplicate)

    def get_submodule(self, target: str) -> torch.nn.Module:
        return self.inner.get_submodule(target)


def explained_model(
    model: torch.nn.Module, output: Any = None, probability: bool = False
) -> tuple[torch.nn.Module, tuple[str, ...]]:
    """The module the hooks will see, and notes about what was done (see the module docstring).

    * ``torch.compile``: its original module (hooks never fire inside compiled code); ``DataParallel`` and
      ``DistributedDataParallel``: their ``.module`` (explained on its own device).
    * ``output``: a key, index or attribute of the model's output; ``None`` picks a Hugging Face model's
      ``logits`` (and, at run time, the ``logits`` of any dict or dataclass output).
    * A final ``Softmax``/``Sigmoid`` step of an ``nn.Sequential`` is left out unless ``probability``; another
      module whose last child is one gets a note that its score is a probability.
    """
    notes: list[str] = []
    inner = model
    while True:
        if isinstance(getattr(inner, "_orig_mod", None), torch.nn.Module):
            inner = inner._orig_mod
            notes.append(
                "explaining the original module of the torch.compile'd model: forward hooks never fire inside "
                "compiled code (same weights, run eagerly)"
            )
        elif isinstance(inner, (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)):
            notes.append(
                f"explaining the module inside {type(inner).__name__} on its own device: the batch is not scattered"
            )
            inner = inner.module
        else:
            break
    last = _last_child(inner)
    if isinstance(last, _FINAL_PROBABILITY):
        kind = type(last).__name__.lower()
        if isinstance(inner, torch.nn.Sequential) and output is None and not probability:
            notes.append(
                f"explaining the logit before the final {kind}; pass probability=True to explain the probability"
            )
            return OutputOf(inner, drop_last=True), tuple(notes)
        notes.append(
            f"the explained score is a probability: the model's last module is a {type(last).__name__}, whose "
            "gradient mixes every class's logit (the papers explain the logit before it)"
        )
    if output is not None:
        notes.append(f"explaining the model's output {output!r}")
        return OutputOf(inner, output), tuple(notes)
    if _is_hugging_face(inner):
        notes.append(
            f"{type(inner).__name__} returns a ModelOutput dataclass; explaining its 'logits' (pass output= to "
            "explain another field)"
        )
        return OutputOf(inner), tuple(notes)
    return inner, tuple(notes)


def select_output(out: Any, output: Any) -> Any:
    """``common.select_output``, except that with ``output=None`` a dict output's ``logits`` are explained (the
    dataclass outputs of Hugging Face models are wrapped by ``OutputOf`` instead)."""
    if output is None and isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    return common.select_output(out, output)


def dependence_score(outputs: Any, n: int) -> torch.Tensor:
    """A score of shape ``(n,)`` for asking whether a layer matters to an output that is not class scores: the sum
    of every floating tensor in the output (dicts, tuples, dataclasses)."""
    leaves = [t for t in torch.utils._pytree.tree_leaves(outputs) if torch.is_tensor(t) and t.is_floating_point()]
    total = sum((t.sum() for t in leaves), torch.zeros((), requires_grad=False))
    return total.reshape(1).expand(n)


def _last_child(module: torch.nn.Module) -> torch.nn.Module | None:
    children = list(module.children())
    return children[-1] if children else None


def _is_hugging_face(module: torch.nn.Module) -> bool:
    # a transformers model can only exist if transformers was imported; nothing is imported to find out
    transformers = sys.modules.get("transformers")
    return transformers is not None and isinstance(module, transformers.PreTrainedModel)
