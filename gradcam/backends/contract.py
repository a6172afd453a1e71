"""The one contract every backend keeps, as a ``typing.Protocol`` that a backend *module* satisfies.

Why a Protocol and not a base class: a backend is a module (``gradcam.backends.torch`` ...), loaded only
when a model of its framework shows up, and a method holds it as ``self.backend``. A Protocol lets a type
checker follow ``self.backend.probe(...)`` into the contract without any backend inheriting anything, and
``tests/test_backend_contract.py`` checks that each module has every member with the same parameters.

Everything framework-neutral that the functions below share (resolving targets before any compute, the
ReLU rule names, batching, layer paths, the caches and the messages) lives once in
``gradcam.backends.common``; a backend module holds only what its framework needs.

Models with several inputs: every ``x`` below is one batch, a tuple or list of batches (the model called as
``model(*x)``; a Keras model with the list), a dict of batches (``model(**x)``; Keras with the dict), or a
``gradcam.backends.inputs.Inputs`` that names the explained one. The explained input is carried inside ``x`` rather
than by a new parameter, so no member's signature changed: it is what ``to_numpy`` returns, the input whose grid
the maps and ``input_size`` have, and the one ``input_gradient`` differentiates with respect to; the other inputs
go to the model unchanged, row for row (a method that makes copies of example ``n`` gives them row ``n`` of each).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np

from gradcam.backends.choice import LayerChoice
from gradcam.backends.common import Reshape, Target
from gradcam.backends.probe import InputGradient, Probe


@runtime_checkable
class Backend(Protocol):
    """What each of ``gradcam.backends.torch``, ``.tensorflow`` and ``.jax`` offers (NumPy in, NumPy out)."""

    NAME: str
    """The backend's name: ``"torch"``, ``"tensorflow"`` or ``"jax"``."""

    def is_model(self, model: Any) -> bool:
        """Whether ``model`` belongs to this framework."""

    def to_numpy(self, x: Any) -> np.ndarray:
        """The input batch as float32 NumPy in the model's own layout."""

    def input_channel_axis(self, model: Any) -> int:
        """The axis of the colour channels in the model's input (1: channels first, -1: channels last)."""

    def layer_names(self, model: Any) -> list[str]:
        """The names a layer can be given by."""

    def layer_shapes(self, model: Any, x: Any) -> list[tuple[str, tuple[int, ...]]]:
        """Each layer's output shape for input ``x``, in execution order."""

    def explained_model(self, model: Any, output: Any = None, probability: bool = False) -> tuple[Any, tuple[str, ...]]:
        """The model as the backend will explain it, and notes (sentences) about what was done to get it.

        Wrappers are unwrapped (a compiled or data-parallel module: the original module is explained), ``output``
        selects one output (a dict key, a tuple index, a dataclass field; ``None``: a Hugging Face model's
        ``logits``), and a final softmax or sigmoid that can be taken off is, unless ``probability`` (the papers
        explain the class score before it). Layer names stay those of the model as given.
        """

    def layer_choice(self, model: Any, x: Any) -> LayerChoice:
        """The automatic layer for inputs shaped like ``x``, its layout and why (``gradcam.backends.choice``)."""

    def default_layer(self, model: Any, x: Any) -> str:
        """The automatic layer: ``layer_choice(model, x).name``."""

    def probe(
        self,
        model: Any,
        x: Any,
        layers: Any,
        target: Target = None,
        reshape: Reshape | None = None,
        at: str = "output",
    ) -> Probe:
        """Activations ``A`` and gradients ``G = d y / d A`` at ``layers``: one forward, one backward per batch,
        gradients taken with respect to the layer outputs only. ``reshape``: a layout name (``"NHWC"``,
        ``"NTC:1"``), a function on the NumPy output, or ``None`` to infer the layout (``backends.layouts``).
        ``at="input"``: each layer's input and the gradient at it instead of its output."""

    def input_gradient(
        self,
        model: Any,
        x: Any,
        target: Target = None,
        rule: str = "plain",
        layers: Any = None,
        reshape: Reshape | None = None,
    ) -> InputGradient:
        """``d y / d x`` with the ReLU backward ``rule`` (``plain | guided | deconvnet``) and how many ReLUs the rule
        rewrote; with ``layers``, their plain activations and gradients from the same forward."""

    def predict(self, model: Any, x: Any, batch_size: int | None = None) -> np.ndarray:
        """The model's outputs, forward only, ``batch_size`` rows at a time."""

    def predict_ablated(
        self, model: Any, x: Any, layer: Any, channels: Any, reshape: Reshape | None = None
    ) -> np.ndarray:
        """Outputs with channel ``channels[m]`` of ``layer`` set to zero in row ``m`` (-1: none); channels count as
        in the probe's ``(N, K, h, w)`` arrays, read with the layout ``reshape`` names (``None``: inferred)."""

    def dense_weight(self, model: Any, layer: Any) -> np.ndarray:
        """A dense layer's weight matrix as ``(outputs, inputs)``."""

    def layer_biases(self, model: Any, x: Any) -> list[tuple[str, np.ndarray]]:
        """Every conv, dense and batch-norm layer that adds a bias to its output, as ``(layer name, bias (C,)
        float32)`` with one value per output channel, in the order the framework lists its layers; ``x`` is an
        input batch (a Flax module's layers are found by running it). Batch norm gives its inference bias
        ``beta - gamma * mean / sqrt(var + eps)``; one that normalizes with batch statistics is refused, as is a
        layer whose output is not bias plus a linear map of its input (a Keras layer with an activation)
        (FullGrad, ``gradcam.reference.fullgrad``)."""
