"""Pixel-space methods: input gradients under changed ReLU backward rules, alone or sharpened by Grad-CAM."""
from __future__ import annotations

from typing import Any

from gradcam import reference as ref
from gradcam.backends.common import Target
from gradcam.explanation import Explanation
from gradcam.methods.base import Method
from gradcam.methods.diagnosis import input_gradient_warnings
from gradcam.methods.gradient import GradCAM


class _InputGradientMethod(Method):
    """``d y / d x`` with every ReLU passing gradient by ``rule``; ``maps`` are ``(N, C, H, W)`` (``(N, C, *grid)``
    for signals and volumes).

    A warning says when the backward met no ReLU (the map is then the plain gradient) or a gradient is all zero.
    """

    rule = "plain"
    takes_layer = False

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        result = self.backend.input_gradient(self.model, self.inputs(x), target, rule=self.rule)
        explanation = Explanation(
            maps=result.gradient,
            targets=result.targets,
            scores=result.scores,
            method=self.name,
            logits=result.logits,
            grid=result.gradient.ndim - 2,
        )
        return self.warned(explanation, input_gradient_warnings(self.name, self.rule, result))


class GuidedBackprop(_InputGradientMethod):
    """Guided Backpropagation (Springenberg et al., 2015): a ReLU passes gradient where its input AND the
    gradient are positive: ``dL/dx = g [x > 0] [g > 0]``. Not class-discriminative on its own."""

    name = "guided-backprop"
    rule = "guided"


class Deconvnet(_InputGradientMethod):
    """Deconvnet (Zeiler & Fergus, 2014): a ReLU passes gradient where the gradient is positive, whatever its
    input: ``dL/dx = g [g > 0]``."""

    name = "deconvnet"
    rule = "deconvnet"


class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al., 2017, section 3.1): ``guided_backprop(x) * upsample(normalize(L))``,
    pointwise per colour channel: the fine detail of Guided Backprop where Grad-CAM finds the class.

    One forward serves both: the layer's plain gradients give ``L``, the guided backward the input gradient.
    Warnings: those of Grad-CAM at the layer, and those of Guided Backprop (no ReLU met, a zero gradient).
    """

    name = "guided-gradcam"
    reads_layer_input = False  # its one forward (input_gradient) captures layer outputs

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        x = self.inputs(x)
        result = self.backend.input_gradient(
            self.model, x, target, rule="guided", layers=self.layers_for(x), reshape=self.reshape
        )
        explanation = self.explain_probe(result.probe)
        explanation.maps = ref.guided_grad_cam(result.gradient, explanation.maps)
        return self.warned(explanation, input_gradient_warnings(self.name, "guided", result))
