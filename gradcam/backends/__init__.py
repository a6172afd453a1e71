"""Framework adapters: each turns (model, layers, input, target) into NumPy arrays.

Why this module looks the way it does:

* A framework may be absent, heavy to import, or broken in a given environment, so no backend is
  imported until a model of its framework shows up. A torch model can only exist if ``torch`` is
  already in ``sys.modules``; we look there first and import nothing speculatively (as einops does).
* Every backend module keeps one contract, ``gradcam.backends.contract.Backend`` (a ``typing.Protocol``
  that a module satisfies; DESIGN.md section 5): NumPy in, NumPy out, activations and gradients of the
  target score at the requested layers from ONE forward and ONE backward per batch. What the three share
  without a framework (targets resolved before any compute, rule names, batching, layer paths, caches,
  messages) is written once in ``gradcam.backends.common``.
* Every layer output is read with a known layout (``layouts``: NCHW, NHWC, tokens with special tokens) or
  refused, and the automatic layer follows one stated rule (``choice``; docs/layers.md).
* Backends never import each other; the public layer (``gradcam.methods``) never imports a framework.
"""
from __future__ import annotations

import importlib
import sys
from typing import Any, cast

from gradcam.backends.choice import LayerChoice
from gradcam.backends.contract import Backend
from gradcam.backends.probe import InputGradient, Probe

__all__ = ["Backend", "LayerChoice", "Probe", "InputGradient", "get_backend", "backend_by_name", "SUPPORTED"]

# backend module name -> the framework module whose presence in sys.modules makes it a candidate
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "keras"),
    "jax": ("jax",),
}


def backend_by_name(name: str) -> Backend:
    """The backend module ``gradcam.backends.<name>`` (imports that framework)."""
    if name not in SUPPORTED:
        raise ValueError(f"unknown backend {name!r}; supported backends: {', '.join(SUPPORTED)}")
    return cast(Backend, importlib.import_module(f"gradcam.backends.{name}"))


def get_backend(model: Any) -> Backend:
    """The backend whose framework ``model`` belongs to, found without importing any framework.

    Raises
    ------
    TypeError
        When no supported framework recognises the model; the message lists the supported ones.
    """
    for name, frameworks in SUPPORTED.items():
        if any(f in sys.modules for f in frameworks):
            backend = backend_by_name(name)
            if backend.is_model(model):
                return backend
    raise TypeError(
        f"cannot explain a model of type {type(model).__module__}.{type(model).__qualname__}: "
        "supported are a torch.nn.Module, a Keras model, and for JAX a (features, head) pair of "
        "functions, a Flax nnx module or a gradcam.backends.jax.FlaxModel"
    )
