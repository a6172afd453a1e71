"""CAM (Zhou et al., 2016): class activation maps from the weights of a GAP + dense head."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.backends import Probe
from gradcam.backends.common import Target
from gradcam.explanation import Explanation
from gradcam.methods.base import LayerMethod
from gradcam.methods.diagnosis import signed_map_warnings, with_warnings


class CAM(LayerMethod):
    """CAM (Zhou et al., 2016, eq. 2): ``M_c = sum_k W_fc[c, k] A_k``, with no ReLU, for a model whose
    ``layer`` is followed by global average pooling and the one dense layer ``fc_layer``.

    Without ``fc_layer`` the dense layer is found: the one layer after ``layer``, in execution order, that the
    backend reads as dense (``dense_weight``), looked up once per layer from the listing of the model's layers
    (``layer_shapes``, one more forward). None or several there is refused with a message. torchcam takes the
    model's only ``nn.Linear`` anywhere; looking only after ``layer`` also serves models with dense layers
    before it, in every framework.

    The head is checked, not assumed: for ``y_c = sum_k W_ck (1/Z) sum_ij A_kij + b_c`` the gradient at the layer
    is ``W_ck / Z`` at every position, so any other gradient means the model is not of CAM's kind, and the call
    raises instead of drawing a wrong map. On such heads ``Grad-CAM = ReLU(CAM) / Z``.

    ``raw`` is the signed map. ``maps`` stretch it from its minimum (0: the strongest evidence against the
    class) to its maximum (1), so a place where CAM is 0 shows at ``-min / (max - min)``; Grad-CAM's maps, from
    the ReLU'd map, put it at 0. A map negative everywhere carries a ``DegenerateMapWarning``.
    """

    name = "cam"
    reads_layer_input = False  # the dense layer's weights apply to the layer's pooled output

    def __init__(self, model: Any, layer: Any = None, *, fc_layer: Any = None, **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.fc_layer = fc_layer
        self._found: dict[str, str] = {}  # layer name -> the dense layer found after it

    def probe(self, x: Any, target: Target) -> Probe:
        probe = super().probe(x, target)
        if self.fc_layer is None:
            for name in probe.layers:
                if name not in self._found:
                    self._found[name] = self._dense_after(name, x)
        return probe

    def _dense_after(self, name: str, x: Any) -> str:
        """The one layer after ``name``, in execution order, whose weights the backend reads as dense."""
        listed = [layer for layer, _ in self.backend.layer_shapes(self.model, x)]
        if name not in listed:
            raise ValueError(f"CAM cannot tell which layers run after {name!r}; give the dense layer with fc_layer=")
        after = listed[len(listed) - listed[::-1].index(name):]
        dense = list(dict.fromkeys(layer for layer in after if self._is_dense(layer)))
        if len(dense) != 1:
            found = f"the dense layers {', '.join(map(repr, dense))}" if dense else "no dense layer"
            raise ValueError(
                f"CAM needs global average pooling and one dense layer after the layer {name!r}, and found {found} "
                "after it; give the dense layer with fc_layer=, or use GradCAM, which works on any head"
            )
        return dense[0]

    def _is_dense(self, layer: str) -> bool:
        try:
            self.backend.dense_weight(self.model, layer)
        except ValueError:  # the backend's answer for a layer that is not dense
            return False
        return True

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
        A, G = probe.activations[name], probe.gradients[name]
        if (probe.targets < 0).any():
            raise ValueError("CAM explains class scores; a target function has no row in the dense layer's weights")
        fc_layer = self.fc_layer if self.fc_layer is not None else self._found[name]
        W = self.backend.dense_weight(self.model, fc_layer)
        if W.shape[1] != A.shape[1]:
            raise ValueError(
                f"CAM needs the dense layer {fc_layer!r} to read the {A.shape[1]} channels of the layer "
                f"(after global average pooling), but its weights have shape (classes, inputs) = {W.shape}"
            )
        Z = int(np.prod(A.shape[2:]))
        grid = (1,) * (A.ndim - 2)
        expected = np.broadcast_to(W[probe.targets].reshape(*W[probe.targets].shape, *grid) / Z, G.shape)
        if not np.allclose(G, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()) + 1e-12):
            raise ValueError(
                f"CAM needs the layer to be followed by global average pooling and the dense layer "
                f"{fc_layer!r} alone; this model's head is different (its gradient is not W/Z everywhere). "
                "Use GradCAM, which equals CAM on such heads and works on any head."
            )
        return ref.cam(A, W, probe.targets), W[probe.targets].astype(np.float32)

    def explain_probe(self, probe: Probe) -> Explanation:
        explanation = super().explain_probe(probe)
        found = []
        for name in probe.layers:
            found += signed_map_warnings(self.name, name, explanation.raw_by_layer[name])
        return with_warnings(explanation, found, self.quiet)
