"""The three ReLU backward rules that separate plain gradients, Guided Backprop and Deconvnet.

For ``y = ReLU(x)`` and an incoming gradient ``g = dL/dy`` (Springenberg et al., 2015, figure 1):

    plain      dL/dx = g * [x > 0]
    deconvnet  dL/dx = g * [g > 0]
    guided     dL/dx = g * [x > 0] * [g > 0]
"""
from __future__ import annotations

import numpy as np

RULES = ("plain", "guided", "deconvnet")


def relu_backward(x: np.ndarray, g: np.ndarray, rule: str = "plain") -> np.ndarray:
    """The gradient a ReLU passes back under ``rule`` (see the module docstring)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    x = np.asarray(x, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    if x.shape != g.shape:
        raise ValueError(f"x and g must have the same shape, got {x.shape} and {g.shape}")
    forward_gate = x > 0 if rule in ("plain", "guided") else True
    backward_gate = g > 0 if rule in ("guided", "deconvnet") else True
    return g * forward_gate * backward_gate
