"""The small bases every method shares: pick the backend, probe, turn raw maps into an Explanation.

A method subclass says only what differs between methods: how a layer's activations ``A`` and gradients
``G`` become a raw map (and, for channel-weighting methods, the channel weights). Everything else, the
framework, the layers, upsampling, normalisation and several-layer averaging, lives here once.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from gradcam.backends import Backend, Probe, backend_by_name, get_backend
from gradcam.backends.common import Target, layer_list
from gradcam.explanation import Explanation
from gradcam.reference import fast


class Method(ABC):
    """Base of every explanation method.

    Parameters
    ----------
    model : a ``torch.nn.Module``, a Keras model, or a JAX model (``(features, head)`` functions or a
        Flax ``(module, variables)`` pair); its framework picks the backend.
    layer : a layer name (``"layer4"``, ``"layer4.1.conv2"``), the layer object, or a list of them; ``None``
        picks the last layer, in execution order, with a spatial output.
    reshape : maps a non-spatial layer output (NumPy) to ``(N, K, h, w)``, e.g. ``gradcam.vit_reshape``.
    backend : force a backend by name (``"torch"``, ``"tensorflow"``, ``"jax"``) instead of detecting it.
    """

    name = "method"

    def __init__(
        self,
        model: Any,
        layer: Any = None,
        *,
        reshape: Callable[[np.ndarray], np.ndarray] | None = None,
        backend: str | None = None,
    ) -> None:
        self.model = model
        self.layers = layer_list(layer)
        self.reshape = reshape
        self.backend: Backend = backend_by_name(backend) if backend else get_backend(model)
        self._default_layers: dict[tuple, list[str]] = {}

    @abstractmethod
    def __call__(self, x: Any, target: Target = None) -> Explanation:
        """Explain the batch ``x`` for ``target``: ``None`` (top-1), an int, one int per image, or a callable
        on the model's outputs returning one score per image."""

    def layers_for(self, x: Any) -> list[Any]:
        """The requested layers, or the backend's default layer for inputs shaped like ``x`` (found once).

        This is the one place where a default layer is chosen; backends take the layers they are given.
        """
        if self.layers:
            return self.layers
        key = tuple(getattr(x, "shape", ()))[1:]
        if key not in self._default_layers:
            self._default_layers[key] = [self.backend.default_layer(self.model, x)]
        return self._default_layers[key]

    def __repr__(self) -> str:
        layers = ", ".join(map(str, self.layers)) or "default"
        return f"{type(self).__name__}(layer={layers}, backend={self.backend.NAME})"


class LayerMethod(Method):
    """A method that reads one or more layers' activations and gradients (one forward, one backward)."""

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        return self.explain_probe(self.probe(x, target))

    def probe(self, x: Any, target: Target) -> Probe:
        return self.backend.probe(self.model, x, self.layers_for(x), target, reshape=self.reshape)

    @abstractmethod
    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, np.ndarray | None]:
        """The raw map ``(N, h, w)`` and channel weights ``(N, K)`` (or None) of layer ``name``."""

    def explain_probe(self, probe: Probe) -> Explanation:
        raw_by_layer, weights_by_layer = {}, {}
        for name in probe.layers:
            raw, weights = self.layer_map(name, probe)
            raw_by_layer[name] = raw
            if weights is not None:
                weights_by_layer[name] = weights
        return Explanation(
            maps=combine_layers(list(raw_by_layer.values()), probe.input_size),
            targets=probe.targets,
            scores=probe.scores,
            method=self.name,
            layers=list(probe.layers),
            raw_by_layer=raw_by_layer,
            weights_by_layer=weights_by_layer,
            logits=probe.logits,
        )


def combine_layers(raw_maps: list[np.ndarray], size: tuple[int, int]) -> np.ndarray:
    """Each layer's map upsampled to ``size`` and normalised; several layers averaged and normalised again.

    In float32 (``gradcam.reference.fast``): ``normalize(upsample(raw, size))`` of the float64 formulas to
    float32 rounding, in about a tenth of their time.
    """
    maps = [fast.upsample_normalized(raw, size) for raw in raw_maps]
    if len(maps) == 1:
        return maps[0]
    return fast.normalize(np.mean(maps, axis=0))


class ChannelWeightMethod(LayerMethod):
    """A method whose map is ``ReLU(sum_k w_k A_k)``: subclasses give ``channel_weights``."""

    @abstractmethod
    def channel_weights(self, A: np.ndarray, G: np.ndarray, probe: Probe) -> np.ndarray:
        """The ``(N, K)`` channel weights of one layer."""

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
        A = probe.activations[name]
        weights = self.channel_weights(A, probe.gradients[name], probe)
        return fast.weighted_map(A, weights), weights
