"""Why a result is degenerate, in words: the checks every method runs on what it returns (issue 14).

A wrong heat map looks as convincing as a right one, and an empty one looks like "nothing here". Each check is
cheap (a max and a min per map); only a map found all zero or flat is looked at again, to say why from the
layer's activations ``A`` and gradients ``G``:

* ``A`` is zero everywhere: a dead layer for this input (nothing there to weigh);
* ``G`` is zero everywhere: the target's score does not depend on the layer (a layer after the head's input,
  a branch the output does not use, or a target function that ignores the image);
* otherwise the channels' weighted sum is negative or zero at every position: nothing at this layer raises
  the score.

Two more checks concern one formula each: CAM's map is signed (Zhou et al. apply no ReLU), so one negative
everywhere is named (its normalized picture would show the least negative places as the hottest); Grad-CAM++'s
position weights ``a`` are named where they leave the range its derivation gives (``grad_cam_pp_singular``).
"""
from __future__ import annotations

import numpy as np

from gradcam.backends.probe import InputGradient
from gradcam.explanation import (
    DegenerateMapWarning,
    Explanation,
    ExplanationWarning,
    NoReluWarning,
    SingularWeightWarning,
    issue,
)

DEAD = "the layer's activations are all zero for this input (a dead layer); explain another layer"
INDEPENDENT = (
    "the target's score does not depend on this layer (its gradient there is zero everywhere); explain a layer "
    "the score is computed from, or check the target"
)
NEGATIVE = (
    "the channels' weighted sum is negative or zero at every position, so nothing at this layer raises the "
    "target's score; counterfactual Grad-CAM shows what lowers it, or explain an earlier layer"
)
FLAT = "it has the same value at every position, so it localizes nothing"
UNIFORM = "the layer's activations do not vary over the positions (centred, they are zero); explain another layer"
NO_RELU = (
    "{rule} met no ReLU in the model (its activations are SiLU, GELU, hard-swish or the like), so its map is the "
    "plain input gradient; on such models use Grad-CAM or the plain gradient knowingly"
)
ZERO_INPUT_GRADIENT = "the input gradient is zero everywhere: the target's score does not depend on the input"
NO_DROP = (
    "no occluded window lowered the target's score, so the occlusion map is all zero; try a larger window or "
    "another baseline"
)

SIGNED_NEGATIVE = (
    "it is negative or zero at every position (CAM keeps the sign), so no position speaks for the class; its "
    "normalized picture shows the least negative places as the hottest"
)
SINGULAR = (
    "at some positions with a positive gradient the position weight a = 1 / (2 + S_k G) is above 1 or has no "
    "value: those channels' activations sum to a negative S_k, which eq. 19 excludes (it assumes A >= 0, where "
    "a <= 1/2). a is the formula's value up to the pole G = -2 / S_k and 0 past it; explain a layer that "
    "follows a ReLU, or use Grad-CAM"
)


def _grouped(reasons: list[str | None]) -> list[ExplanationWarning]:
    """One ``DegenerateMapWarning`` per distinct reason, naming the images (batch rows) it concerns."""
    return [
        ExplanationWarning(DegenerateMapWarning, reason, [n for n, r in enumerate(reasons) if r == reason])
        for reason in dict.fromkeys(r for r in reasons if r is not None)
    ]


def _zero_and_flat(maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per map of ``(N, ...)``: whether it is zero everywhere, and whether it is flat but not zero."""
    flat = maps.reshape(len(maps), -1)
    high, low = flat.max(axis=1), flat.min(axis=1)
    zero = (high == 0) & (low == 0)
    return zero, (high == low) & ~zero


def layer_map_warnings(
    method: str, layer: str, raw: np.ndarray, A: np.ndarray, G: np.ndarray | None
) -> list[ExplanationWarning]:
    """The warnings about the raw maps ``(N, h, w)`` of ``method`` at ``layer``, from ``A`` and ``G``
    ``(N, K, h, w)``; ``G`` is None for a method whose map takes no gradient (Eigen-CAM), which can be all zero
    only where ``A`` is, or, centred, where ``A`` is the same at every position."""
    zero, flat = _zero_and_flat(raw)
    if not (zero.any() or flat.any()):
        return []
    what = f"the {method} map at layer {layer!r}"
    reasons: list[str | None] = []
    for n in range(len(raw)):
        if flat[n]:
            reasons.append(f"{what} is flat: {FLAT}")
        elif not zero[n]:
            reasons.append(None)
        elif not A[n].any():
            reasons.append(f"{what} is all zero: {DEAD}")
        elif G is None:
            reasons.append(f"{what} is all zero: {UNIFORM}")
        elif not G[n].any():
            reasons.append(f"{what} is all zero: {INDEPENDENT}")
        else:
            reasons.append(f"{what} is all zero: {NEGATIVE}")
    return _grouped(reasons)


def input_gradient_warnings(method: str, rule: str, result: InputGradient) -> list[ExplanationWarning]:
    """The warnings about an input gradient taken under the ReLU rule ``rule``: a rule that met no ReLU (the
    backend counts them, ``result.relu_count``), and images whose gradient is zero everywhere."""
    found = []
    if rule != "plain" and result.relu_count == 0:
        found.append(ExplanationWarning(NoReluWarning, NO_RELU.format(rule=f"{method}'s {rule} rule")))
    zero, _ = _zero_and_flat(result.gradient)
    return found + _grouped([f"the {method} map is all zero: {ZERO_INPUT_GRADIENT}" if z else None for z in zero])


def occlusion_warnings(raw: np.ndarray) -> list[ExplanationWarning]:
    """The warnings about occlusion's signed drops ``(N, H, W)``: a map with no positive drop is all zero."""
    return _grouped([NO_DROP if high <= 0 else None for high in raw.reshape(len(raw), -1).max(axis=1)])


def signed_map_warnings(method: str, layer: str, raw: np.ndarray) -> list[ExplanationWarning]:
    """The warnings about signed raw maps ``(N, h, w)`` (CAM): a map with no positive value (an all-zero one is
    named by ``layer_map_warnings``)."""
    flat = raw.reshape(len(raw), -1)
    negative = (flat.max(axis=1) <= 0) & (flat.min(axis=1) < 0)
    return _grouped([f"the {method} map at layer {layer!r}: {SIGNED_NEGATIVE}" if n else None for n in negative])


def singular_weight_warnings(method: str, layer: str, singular: np.ndarray) -> list[ExplanationWarning]:
    """The warnings about Grad-CAM++'s position weights, from a mask whose first axis is the image: ``(N, K, h, w)``
    positions where they leave ``[0, 1]`` (``gradcam.reference.cams.grad_cam_pp_singular``) or ``(N,)`` images
    (``gradcam.reference.fast.grad_cam_pp_singular_images``), one warning for the images concerned."""
    reasons = [f"the {method} weights at layer {layer!r}: {SINGULAR}" if s.any() else None for s in singular]
    return [ExplanationWarning(SingularWeightWarning, w.reason, w.images) for w in _grouped(reasons)]


def with_warnings(explanation: Explanation, found: list[ExplanationWarning], quiet: bool) -> Explanation:
    """``explanation`` with ``found`` added to its warnings, issued unless ``quiet`` (for a method's own checks
    after the shared ones of ``LayerMethod.explain_probe``)."""
    explanation.warnings = explanation.warnings + tuple(found)
    if found and not quiet:
        issue(found)
    return explanation
