"""FullGrad (Srinivas & Fleuret, NeurIPS 2019): the input-gradient map plus every layer's bias-gradient maps.

It needs what no other method does: the biases of the model's layers, which each backend reads
(``Backend.layer_biases``), and the gradient at every layer with a bias, taken in the same forward as the input
gradient (``Backend.input_gradient`` with those layers).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from gradcam.backends.common import ScoreIndependentError, Target, channels_first
from gradcam.explanation import Explanation
from gradcam.methods.base import Method
from gradcam.methods.diagnosis import input_gradient_warnings
from gradcam.reference import fast
from gradcam.reference import fullgrad as rules


class FullGrad(Method):
    """FullGrad: ``S(x) = sum_c psi(grad_x f * x)_c + sum_l sum_c psi(G^l_c b^l_c)``, with
    ``psi(m) = normalize(upsample(|m|))`` per channel (``gradcam.reference.fullgrad``), ``G^l`` the gradient at
    the output of layer ``l`` and ``b^l`` its bias.

    The layers are every conv, dense and batch-norm layer with a bias (batch norm's is
    ``beta - gamma * mean / sqrt(var + eps)``) whose output is a map with more than one position: a dense layer's
    bias gradient (or a 1 x 1 map's) is one number per channel, which ``psi`` turns into a flat map and then 0, so
    leaving those layers out changes nothing. No layer is chosen: ``layer`` must be ``None``. ``raw`` holds ``S``
    at the input's size (layer ``"input"``), ``maps`` its normalization. Cost: a pass that lists the layers'
    output shapes (a forward; a trace in JAX), then one forward whose backward gives the input gradient and the
    gradients at every biased layer (the torch backend walks the graph twice: to the layers, then to the input).

    Where it agrees with pytorch-grad-cam's ``FullGrad``: the same terms and ``psi`` applied per channel, each
    channel's map normalised on its own, summed, then normalised. Where it differs: pytorch-grad-cam takes conv
    and ``BatchNorm2d`` layers only (a dense bias would add 0 anyway); it normalises *before* resizing (and
    resizes with OpenCV), which moves values where a layer is upsampled, and divides by ``max + 1e-7``, so a
    nearly flat channel (range ~1e-7) counts partly instead of fully; ours normalises after upsampling, as the
    paper's ``psi`` and DESIGN.md do, and an exactly flat channel is 0. The paper's own code normalises each
    layer's channels together rather than each channel (its ``psi`` in eq. 5 is per channel).

    What the frameworks must give (``layer_biases``): PyTorch and Flax, any model in inference mode (batch norm
    with running statistics; a ``(features, head)`` pair of JAX functions is refused, its layers are hidden);
    Keras, any model whose conv and dense layers have no activation of their own: Keras adds the bias before
    the layer's activation, where the backend cannot take the gradient, so such a model is refused with the
    layer named (give the activation its own layer).
    """

    name = "fullgrad"
    takes_layer = False

    def __init__(self, model: Any, layer: Any = None, **options: Any) -> None:
        if layer is not None:
            raise ValueError("FullGrad takes every layer with a bias, not a chosen layer: leave layer=None")
        super().__init__(model, None, **options)

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        x = self.inputs(x)
        biased = self.spatial_biases(x)
        names = [name for name, _ in biased]
        try:
            result = self.backend.input_gradient(self.model, x, target, rule="plain", layers=names or None)
        except ScoreIndependentError as error:
            # layers the score does not depend on (a detector's proposal head, whose boxes are detached): their
            # bias-gradients are zero, so they add nothing to the sum; run again without them
            unused = set(error.layers)
            if not unused or not unused <= set(names):
                raise
            biased = [(name, b) for name, b in biased if name not in unused]
            names = [name for name, _ in biased]
            result = self.backend.input_gradient(self.model, x, target, rule="plain", layers=names or None)
        images = channels_first(self.backend.to_numpy(x), self.backend.input_channel_axis(self.model))
        parts = []
        for name, b in biased:
            G = result.probe.gradients[name]
            if G.shape[1] != b.size:
                raise ValueError(
                    f"layer {name!r} has {b.size} biases but its output was read with {G.shape[1]} channels; "
                    "FullGrad needs its output as (N, C, *grid) with C = the number of biases"
                )
            parts.append((G, b))
        raw = rules.full_grad(images, result.gradient, parts, self.upsample)
        explanation = Explanation(
            maps=fast.normalize(raw, grid=raw.ndim - 1),
            targets=result.targets,
            scores=result.scores,
            method=self.name,
            layers=["input"],
            raw_by_layer={"input": raw},
            logits=result.logits,
            grid=raw.ndim - 1,
        )
        return self.warned(explanation, input_gradient_warnings(self.name, "plain", result))

    def spatial_biases(self, x: Any) -> list[tuple[str, np.ndarray]]:
        """The layers with a bias whose output has more than one position, with their biases (``C`` values)."""
        shapes = dict(self.backend.layer_shapes(self.model, x))
        rank = len(getattr(x, "shape", None) or np.shape(x))
        kept = []
        for name, b in self.backend.layer_biases(self.model, x):
            shape = shapes.get(name)
            # a map of the input's rank with C = b.size channels has prod(shape[1:]) / C positions, whichever axis
            # C is on
            if shape is not None and len(shape) == rank and int(np.prod(shape[1:])) // b.size > 1:
                kept.append((name, b))
        return kept
