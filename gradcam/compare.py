"""``gradcam.compare``: the same network in several frameworks, explained side by side, with the differences.

A regression test across frameworks asks one question per method: do the scores, the channel weights and the
maps agree? ``compare`` runs every requested method on every model and reports, per method and against the
first model, the largest absolute difference of each, so a test can assert them and a person can read them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradcam.api import method_class
from gradcam.backends import get_backend
from gradcam.explanation import Explanation

DEFAULT_METHODS = (
    "gradcam",
    "gradcam++",
    "smoothgradcam++",
    "xgradcam",
    "layercam",
    "hirescam",
    "eigencam",
    "guided-backprop",
    "guided-gradcam",
)


@dataclass
class Difference:
    """The largest differences between one model's explanation and the reference model's, for one method."""

    method: str
    model: str
    reference: str
    scores: float  # max |y - y_ref|
    scores_relative: float  # max |y - y_ref| / max |y_ref|: relative to the batch's score scale
    weights: float | None  # max |w - w_ref| (methods with channel weights)
    maps: float  # max |m - m_ref| of the maps as compared (see Comparison)


@dataclass
class Comparison:
    """Every explanation (``explanations[method][model]``) and the differences to the first model.

    Heat maps are compared as returned (normalised to [0, 1]); input-space gradients (Guided Backprop,
    Guided Grad-CAM) are divided by their largest absolute value per image first, since their scale is
    the model's, not ours.
    """

    explanations: dict[str, dict[str, Explanation]]
    differences: list[Difference] = field(default_factory=list)

    def max_difference(self, quantity: str = "maps", method: str | None = None) -> float:
        """The largest difference of ``quantity`` (``scores``, ``scores_relative``, ``weights``, ``maps``)."""
        values = [getattr(d, quantity) for d in self.differences if method in (None, d.method)]
        return max((v for v in values if v is not None), default=0.0)

    def table(self) -> str:
        """The differences as a markdown table."""
        lines = ["| method | model | vs | scores | scores (rel.) | weights | maps |", "|---|---|---|---|---|---|---|"]
        for d in self.differences:
            weights = "-" if d.weights is None else f"{d.weights:.2e}"
            lines.append(
                f"| {d.method} | {d.model} | {d.reference} | {d.scores:.2e} | {d.scores_relative:.2e} "
                f"| {weights} | {d.maps:.2e} |"
            )
        return "\n".join(lines)

    def assert_close(self, maps_atol: float = 1e-5, scores_rtol: float = 1e-5) -> None:
        """Raise ``AssertionError`` with the table when a map or score differs beyond the tolerances."""
        if self.max_difference("maps") > maps_atol or self.max_difference("scores_relative") > scores_rtol:
            raise AssertionError(
                f"frameworks disagree beyond maps_atol={maps_atol}, scores_rtol={scores_rtol}:\n{self.table()}"
            )

    def __str__(self) -> str:
        return self.table()


def _comparable(ex: Explanation) -> np.ndarray:
    if not ex.pixel_space:
        return ex.maps.astype(np.float64)
    scale = np.abs(ex.maps).max(axis=(1, 2, 3), keepdims=True)
    return np.divide(ex.maps, scale, out=np.zeros(ex.maps.shape), where=scale > 0)


def _input_for(model: Any, x: np.ndarray) -> np.ndarray:
    """Channels-first images ``x`` in the layout ``model`` takes: NCHW for PyTorch, else its channel axis."""
    if get_backend(model).__name__.endswith(".torch") or getattr(model, "channel_axis", -1) == 1:
        return x
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def compare(
    models: dict[str, tuple[Any, ...]],
    x: np.ndarray,
    methods: tuple[str, ...] | list[str] = DEFAULT_METHODS,
    target: Any = None,
    method_options: dict[str, dict[str, Any]] | None = None,
) -> Comparison:
    """Explain ``x`` with every method on every model and measure how far each model is from the first.

    Parameters
    ----------
    models : name -> ``(model, layer)`` or ``(model, layer, x_for_this_model)``: the same network in several
        frameworks. Without its own input a model gets ``x`` in its layout (NHWC for Keras and Flax).
    x : ``(N, C, H, W)`` images, channels first.
    methods : method names (``gradcam.METHODS``).
    target : as for every method; ``None`` explains each model's own top-1 class, so give an int or a list
        when the models' top classes might differ.
    method_options : method name -> keyword arguments for its constructor, e.g.
        ``{"smoothgradcam++": {"n_samples": 4}}``.
    """
    if len(models) < 2:
        raise ValueError("compare needs at least two models")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 4:
        raise ValueError(f"x must be channels-first images (N, C, H, W), got shape {x.shape}")
    explanations: dict[str, dict[str, Explanation]] = {}
    for method in methods:
        cls = method_class(method)
        per_model = {}
        for name, spec in models.items():
            model, layer = spec[0], spec[1]
            inputs = spec[2] if len(spec) > 2 else _input_for(model, x)
            kwargs = dict((method_options or {}).get(method, {}))
            if cls.takes_layer:
                kwargs["layer"] = layer
            per_model[name] = cls(model, **kwargs)(inputs, target)
        explanations[cls.name] = per_model
    comparison = Comparison(explanations)
    reference = next(iter(models))
    for method, per_model in explanations.items():
        ref_ex = per_model[reference]
        for name, ex in per_model.items():
            if name == reference:
                continue
            score_diff = np.abs(ex.scores.astype(np.float64) - ref_ex.scores)
            weights = None
            if ex.weights is not None and ref_ex.weights is not None:
                weights = float(np.abs(ex.weights.astype(np.float64) - ref_ex.weights).max())
            comparison.differences.append(
                Difference(
                    method=method,
                    model=name,
                    reference=reference,
                    scores=float(score_diff.max()),
                    scores_relative=float(score_diff.max() / max(float(np.abs(ref_ex.scores).max()), 1e-30)),
                    weights=weights,
                    maps=float(np.abs(_comparable(ex) - _comparable(ref_ex)).max()),
                )
            )
    return comparison
