"""What a backend hands to the math: plain NumPy arrays in the canonical layout of DESIGN.md section 3."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Probe:
    """Activations and gradients of one batch at one or more layers.

    Attributes
    ----------
    activations, gradients
        layer name -> ``(N, K, *grid)`` float32, channels first (``(N, K, h, w)`` for images, ``(N, K, l)`` for
        signals, ``(N, K, d, h, w)`` for volumes); ``gradients[l] = d y_n / d A_n``.
    scores
        ``(N,)`` float32: the target score of each image (raw, before softmax).
    targets
        ``(N,)`` int64 class index per image, or -1 where the target was a callable.
    logits
        ``(N, C)`` float32 model outputs when the output is a class-score matrix, else ``None``.
    input_size
        The input's grid: ``(H, W)`` of images, ``(L,)`` of signals, ``(D, H, W)`` of volumes and clips.
    layers
        The layer names, in the order requested.
    layouts
        layer name -> the layout its output was read with (``"NCHW"``, ``"NHWC"``, ``"NTC:1"``, ...; ``"reshape"``
        for a user's function); see ``gradcam.backends.layouts``.
    """

    activations: dict[str, np.ndarray]
    gradients: dict[str, np.ndarray]
    scores: np.ndarray
    targets: np.ndarray
    logits: np.ndarray | None
    input_size: tuple[int, ...]
    layers: list[str] = field(default_factory=list)
    layouts: dict[str, str] = field(default_factory=dict)


@dataclass
class InputGradient:
    """``d y / d x`` under a ReLU backward rule, as ``(N, C, *grid)`` float32 (channels first; ``(N, C, H, W)``
    for images).

    ``probe`` holds the plain activations and gradients at the requested layers when those were
    asked for in the same pass (Guided Grad-CAM), else ``None``.

    ``relu_count`` is the number of ReLUs of the forward whose backward the rule (guided, deconvnet) rewrote;
    0 means the rule changed nothing and the gradient is the plain one (a SiLU, GELU or hard-swish network).
    For the plain rule it is -1 (not counted).
    """

    gradient: np.ndarray
    scores: np.ndarray
    targets: np.ndarray
    logits: np.ndarray | None
    probe: Probe | None = None
    relu_count: int = -1
