"""Framework adapters: each turns (model, layers, input, target) into NumPy arrays.

Why this module looks the way it does:

* A framework may be absent, heavy to import, or broken in a given environment, so no backend is
  imported until a model of its framework shows up. A torch model can only exist if ``torch`` is
  already in ``sys.modules``; we look there first and import nothing speculatively (as einops does).
* Every backend module offers the same functions over NumPy in / NumPy out (DESIGN.md section 5):

  ``is_model(model) -> bool``
      Whether ``model`` belongs to this framework.
  ``probe(model, x, layers, target, reshape=None) -> Probe``
      Activations and gradients of the target score at ``layers``: ONE forward and ONE backward
      per batch, however many layers, gradients taken with respect to the layer outputs only.
  ``input_gradient(model, x, target, rule="plain", layers=()) -> InputGradient``
      ``d y / d x`` with ReLU backward rule ``plain | guided | deconvnet``. With ``layers``, the
      plain activations and gradients at those layers come from the same forward.
  ``predict(model, x, batch_size=None) -> np.ndarray``
      The model's outputs (forward only), ``batch_size`` rows at a time.
  ``predict_ablated(model, x, layer, channels, batch_size=None) -> np.ndarray``
      Outputs with channel ``channels[m]`` of ``layer`` set to zero in row ``m`` (-1: none), for Ablation-CAM.
  ``dense_weight(model, layer) -> np.ndarray``
      A dense layer's weight matrix as ``(outputs, inputs)``, for CAM.
  ``layer_names(model) -> list[str]``, ``layer_shapes(model, x)`` and ``default_layer(model, x) -> str``
      The default layer is the last module, in execution order, whose output is spatial.
  ``to_numpy(x) -> np.ndarray``
      The input as float32 NumPy in the framework's own layout.

* Backends never import each other; the public layer (``gradcam.methods``) never imports a framework.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

from gradcam.backends.probe import InputGradient, Probe

__all__ = ["Probe", "InputGradient", "get_backend", "backend_by_name", "SUPPORTED"]

# backend module name -> the framework module whose presence in sys.modules makes it a candidate
SUPPORTED: dict[str, tuple[str, ...]] = {
    "torch": ("torch",),
    "tensorflow": ("tensorflow", "keras"),
    "jax": ("jax",),
}


def backend_by_name(name: str) -> ModuleType:
    """The backend module ``gradcam.backends.<name>`` (imports that framework)."""
    if name not in SUPPORTED:
        raise ValueError(f"unknown backend {name!r}; supported backends: {', '.join(SUPPORTED)}")
    return importlib.import_module(f"gradcam.backends.{name}")


def get_backend(model: Any) -> ModuleType:
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
        "functions or a gradcam.backends.jax.FlaxModel"
    )
