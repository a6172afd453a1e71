"""CAM (Zhou et al., 2016): class activation maps from the weights of a GAP + dense head."""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.backends import Probe
from gradcam.explanation import Explanation
from gradcam.methods.base import LayerMethod
from gradcam.methods.diagnosis import signed_map_warnings, with_warnings


class CAM(LayerMethod):
    """CAM (Zhou et al., 2016, eq. 2): ``M_c = sum_k W_fc[c, k] A_k``, with no ReLU, for a model whose
    ``layer`` is followed by global average pooling and the one dense layer ``fc_layer``.

    The head is checked, not assumed: for ``y_c = sum_k W_ck (1/Z) sum_ij A_kij + b_c`` the gradient at the layer
    is ``W_ck / Z`` at every position, so any other gradient means the model is not of CAM's kind, and the call
    raises instead of drawing a wrong map. On such heads ``Grad-CAM = ReLU(CAM) / Z``.

    ``raw`` is the signed map. ``maps`` stretch it from its minimum (0: the strongest evidence against the
    class) to its maximum (1), so a place where CAM is 0 shows at ``-min / (max - min)``; Grad-CAM's maps, from
    the ReLU'd map, put it at 0. A map negative everywhere carries a ``DegenerateMapWarning``.
    """

    name = "cam"

    def __init__(self, model: Any, layer: Any = None, *, fc_layer: Any, **options: Any) -> None:
        super().__init__(model, layer, **options)
        self.fc_layer = fc_layer

    def layer_map(self, name: str, probe: Probe) -> tuple[np.ndarray, np.ndarray]:
        A, G = probe.activations[name], probe.gradients[name]
        if (probe.targets < 0).any():
            raise ValueError("CAM explains class scores; a target function has no row in the dense layer's weights")
        W = self.backend.dense_weight(self.model, self.fc_layer)
        if W.shape[1] != A.shape[1]:
            raise ValueError(
                f"CAM needs the dense layer {self.fc_layer!r} to read the {A.shape[1]} channels of the layer "
                f"(after global average pooling), but its weights have shape (classes, inputs) = {W.shape}"
            )
        Z = A.shape[2] * A.shape[3]
        expected = np.broadcast_to(W[probe.targets][:, :, None, None] / Z, G.shape)
        if not np.allclose(G, expected, rtol=1e-3, atol=1e-4 * float(np.abs(expected).max()) + 1e-12):
            raise ValueError(
                f"CAM needs the layer to be followed by global average pooling and the dense layer "
                f"{self.fc_layer!r} alone; this model's head is different (its gradient is not W/Z everywhere). "
                "Use GradCAM, which equals CAM on such heads and works on any head."
            )
        return ref.cam(A, W, probe.targets), W[probe.targets].astype(np.float32)

    def explain_probe(self, probe: Probe) -> Explanation:
        explanation = super().explain_probe(probe)
        found = []
        for name in probe.layers:
            found += signed_map_warnings(self.name, name, explanation.raw_by_layer[name])
        return with_warnings(explanation, found, self.quiet)
