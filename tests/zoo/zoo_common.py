"""What every zoo suite shares: a model case, the per-method options that keep the suite fast, the hand-written
Grad-CAM formula on channels-first arrays, the table the closing note reports, and running every method.

Each framework's suite reads a layer's output and gradient with its own autograd (hooks, GradientTape, vjp),
lays them out channels first by hand (``by_hand_nchw``: written here, not taken from ``gradcam.backends.layouts``)
and compares ``gradcam.GradCAM``'s raw map with ``ReLU(sum_k mean_ij(G_k) A_k)`` computed here.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import gradcam

TOLERANCE = 1e-5
"""Grad-CAM's raw map against the hand-written one: max |difference| / max |hand-written map|."""

# options that keep every method cheap on tiny models (the methods' own defaults are for real images)
FAST = {
    "smoothgradcam++": {"n_samples": 2},
    "occlusion": {"window": 8, "stride": 8},
    "scorecam": {"batch_size": 64, "max_channels": 32},
    "ablationcam": {"batch_size": 64},
    "smoothgrad": {"n_samples": 2},
    "sscam": {"batch_size": 64, "max_channels": 8, "n_samples": 2},
    "iscam": {"batch_size": 64, "max_channels": 8, "n_samples": 2},
}


@dataclass
class Case:
    """A zoo model: how to build it, its input size, the automatic layer and layout it must get, a target."""

    build: Callable[[], Any]
    size: int
    layer: str
    layout: str
    target: Any = None  # None: top-1; else a callable in the framework's ops
    fc: str | None = None  # the dense layer after global average pooling, for CAM
    options: dict[str, Any] = field(default_factory=dict)  # for every method (output=, ...)
    seed: int = 0  # of the random weights (some draws give an all-zero map, which would make a weak comparison)
    skip: tuple[str, ...] = ()  # methods not run on this model, for their cost (said in the zoo table)


ROWS: dict[str, dict[str, Any]] = {}
"""model -> the zoo table's row (automatic layer, layout, Grad-CAM difference, methods run, warnings)."""


def by_hand_nchw(array: np.ndarray, layout: str) -> np.ndarray:
    """A layer output in ``layout`` as ``(N, K, h, w)``, written out for the test: NCHW as is, NHWC transposed,
    ``NTC:s`` without its ``s`` leading tokens and the rest as a square grid."""
    if layout == "NCHW":
        return array
    if layout == "NHWC":
        return array.transpose(0, 3, 1, 2)
    special = int(layout.split(":")[1]) if ":" in layout else 0
    patches = array[:, special:, :]
    n, t, c = patches.shape
    side = int(round(t**0.5))
    return patches.reshape(n, side, side, c).transpose(0, 3, 1, 2)


def grad_cam_by_hand(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """``ReLU(sum_k alpha_k A_k)`` with ``alpha_k = mean_ij G_kij``, in float64, channels first."""
    A, G = A.astype(np.float64), G.astype(np.float64)
    alpha = G.mean(axis=(2, 3))
    return np.maximum(np.einsum("nk,nkhw->nhw", alpha, A), 0)


def relative_difference(raw: np.ndarray, hand: np.ndarray) -> float:
    """``max |raw - hand| / max |hand|`` (the absolute difference when the hand-written map is 0)."""
    scale = float(np.abs(hand).max())
    return float(np.abs(raw - hand).max() / (scale if scale > 0 else 1.0))


def check_grad_cam(name: str, case: Case, model: Any, x: Any, hand: np.ndarray, backend: str) -> Any:
    """Grad-CAM with the automatic layer: the expected layer and layout, the hand-written map to ``TOLERANCE``."""
    cam = gradcam.GradCAM(model, quiet=True, **case.options)
    ex = cam(x, case.target)
    chosen = cam.backend.layer_choice(cam.model, x)
    difference = relative_difference(ex.raw, hand)
    ROWS[name] = {
        "backend": backend, "layer": chosen.name, "layout": chosen.layout, "difference": difference,
        "notes": list(cam.notes),
    }
    assert ex.layers == [case.layer], (name, chosen.why)
    assert chosen.layout == case.layout, name
    assert np.isfinite(ex.maps).all() and np.isfinite(ex.raw).all()
    assert hand.max() > 0, f"{name}: the hand-written map is all zero, so the comparison would say little"
    assert difference <= TOLERANCE, (name, difference)
    return ex


# the refusals a method states instead of drawing a wrong map: CAM on another head, a class-scoring method
# (Score-CAM and its variants, Ablation-CAM, Occlusion) given a target function in torch-only operations or a
# model whose outputs are not one array, Finer-CAM given a target function
REFUSALS = (
    "CAM needs the layer to be followed by global average pooling",
    "call a target function with the model's outputs as one NumPy array",
    "Finer-CAM compares class scores; give target= a class index (or None), not a function",
    # FullGrad on a Keras layer that applies its own non-linear activation after its bias (EfficientNet's swish)
    "after its bias, so the gradient at its output is not the gradient at its bias",
)


def run_every_method(name: str, case: Case, model: Any, x: Any, layer: Any = None) -> dict[str, str]:
    """Every method of ``gradcam.METHODS`` on ``model``: finite maps of the input's size, or one of the stated
    refusals (``REFUSALS``: CAM on a head that is not GAP + one dense layer, class-scoring methods given a target
    function). ``layer``: the layer, where the automatic one (found once per method) would cost too much.
    Returns method -> the warnings' categories, ``"ok"``, ``"refused"`` or ``"skipped (cost)"``."""
    outcome = {}
    for method in gradcam.METHODS:
        options = {**case.options, **FAST.get(method, {})}
        if method in case.skip:
            outcome[method] = "skipped (cost)"
            continue
        if method == "cam":
            if case.fc is None:
                outcome[method] = "no GAP + dense head"
                continue
            options["fc_layer"] = case.fc
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                given = layer if gradcam.method_class(method).takes_layer else None
                ex = gradcam.explain(model, x, method=method, layer=given, target=case.target, **options)
            except ValueError as error:
                if any(refusal in str(error) for refusal in REFUSALS):
                    outcome[method] = "refused"
                    continue
                raise
        assert ex.maps.shape[0] == len(x) and np.isfinite(ex.maps).all(), (name, method)
        kinds = sorted({type(w).__name__ if not hasattr(w, "category") else w.category.__name__
                        for w in getattr(ex, "warnings", ())})
        outcome[method] = ", ".join(kinds) or "ok"
    ROWS.setdefault(name, {})["methods"] = outcome
    return outcome
