"""The result every method returns: maps, the numbers behind them, the warnings about them, and ways to look
at them."""
from __future__ import annotations

import os
import sys
import warnings as python_warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gradcam import reference as ref
from gradcam.reference import fast


def as_numpy(array: Any) -> np.ndarray:
    """A framework tensor (torch, TensorFlow, JAX) or array-like as a NumPy array, without importing a framework."""
    if hasattr(array, "detach"):  # torch: leave the graph and the device first
        array = array.detach().cpu()
    return np.asarray(array)


def as_channels_last(images: Any) -> np.ndarray:
    """Images ``(N, H, W, C)`` or channels-first ``(N, C, H, W)`` (C in 1 or 3) as ``(N, H, W, C)``."""
    images = as_numpy(images)
    if images.ndim == 3:
        images = images[None]
    if images.ndim == 4 and images.shape[-1] not in (1, 3) and images.shape[1] in (1, 3):
        images = images.transpose(0, 2, 3, 1)
    return images


class GradcamWarning(UserWarning):
    """Base of the warnings gradcam issues: a result that looks like an explanation but explains little or
    something other than what was asked. Filter them as one: ``warnings.simplefilter("error", GradcamWarning)``."""


class DegenerateMapWarning(GradcamWarning):
    """A heat map is all zero or flat, so it localizes nothing; the message says why (read from the layer's
    activations ``A`` and gradients ``G``): a dead layer, a target that does not depend on the layer, or a
    weighted sum that is negative everywhere."""


class SingularWeightWarning(GradcamWarning):
    """Grad-CAM++'s position weights ``a = 1 / (2 + S_k G)`` left the range its eq. 19 gives for activations
    ``A >= 0`` (``0 < a <= 1/2``): a channel's activations sum to a negative ``S_k`` (LayerNorm, pre-activation
    layers), so ``a`` passes 1 near the pole ``G = -2 / S_k`` and is set to 0 past it."""


class NoReluWarning(GradcamWarning):
    """Guided Backprop, Deconvnet or Guided Grad-CAM met no ReLU in the model (SiLU, GELU or hard-swish nets):
    their rule changes nothing, and the map is the plain input gradient."""


class ProbabilityWarning(GradcamWarning):
    """The explained score is a probability (after the model's softmax or sigmoid), not the class's logit that
    the papers explain."""


class ExplanationWarning(str):
    """One warning of an ``Explanation``: its text, with the class it is issued as and the images it concerns.

    A string (the text), so that ``Explanation.warnings`` reads as a tuple of messages; ``reason`` is the text
    without the images, which a per-image record shows.
    """

    __slots__ = ("category", "images", "reason")
    category: type[GradcamWarning]
    images: tuple[int, ...] | None
    reason: str

    def __new__(
        cls, category: type[GradcamWarning], reason: str, images: Iterable[int] | None = None
    ) -> ExplanationWarning:
        images = None if images is None else tuple(int(i) for i in images)
        if images is None:
            text = reason
        else:
            text = f"image{'s' if len(images) > 1 else ''} {', '.join(map(str, images))}: {reason}"
        warning = super().__new__(cls, text)
        warning.category, warning.images, warning.reason = category, images, reason
        return warning

    def concerns(self, image: int) -> bool:
        """Whether the warning is about image ``image`` of the batch."""
        return self.images is None or image in self.images

    def of_rows(self, rows: list[int]) -> ExplanationWarning | None:
        """The warning for the batch made of ``rows`` of this one (images renumbered), or None if it concerns
        none of them."""
        if self.images is None:
            return self
        kept = [new for new, old in enumerate(rows) if old in self.images]
        return ExplanationWarning(self.category, self.reason, kept) if kept else None


def issue(found: Iterable[ExplanationWarning]) -> None:
    """Issue each warning with ``warnings.warn``, attributed to the first caller outside gradcam (the user's line
    that called the method), so that the default filter shows it once per place."""
    here = os.path.dirname(os.path.abspath(__file__))
    level, frame = 1, sys._getframe(0)
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(here + os.sep):
        level, frame = level + 1, frame.f_back
    for warning in found:
        python_warnings.warn(str(warning), warning.category, stacklevel=level)


@dataclass(frozen=True)
class ChannelRanking:
    """The k most and least important channels of each image by weight (Grad-CAM paper, section 7).

    ``most[n]`` lists channel indices by decreasing weight, ``least[n]`` by increasing weight; the
    ``*_weights`` arrays hold the matching weights. All arrays are ``(N, k)``.
    """

    most: np.ndarray
    most_weights: np.ndarray
    least: np.ndarray
    least_weights: np.ndarray


@dataclass
class Explanation:
    """What a method found for a batch of N images.

    Attributes
    ----------
    maps : (N, H, W) float32 in [0, 1], upsampled to the input size and normalised (for several layers,
        the mean of the per-layer maps, normalised again); ``(N, L)`` for signals, ``(N, D, H, W)`` for volumes
        and clips (``(N, *grid)``, ``grid`` axes). Pixel-space methods (Guided Backprop, Deconvnet, Guided
        Grad-CAM) give ``(N, C, H, W)`` (``(N, C, *grid)``) input-space gradients instead; see :meth:`image`.
    raw : (N, h, w) the first layer's map before upsampling and normalisation (``raw_by_layer`` has all).
    weights : (N, K) the first layer's channel weights, where the method has them (``weights_by_layer``).
    targets : (N,) the explained class per image (-1 where the target was a function).
    scores : (N,) the target's raw score per image.
    logits : (N, classes) the model's outputs when they are class scores, else None.
    layer : the (first) layer explained, as resolved from the request or chosen by default.
    layers : every layer explained.
    method : the method's name.
    warnings : what is degenerate about the result, one message each (``ExplanationWarning``: a string that
        also names its warning class and images): all-zero or flat maps and why, a guided rule that met no
        ReLU, a probability explained instead of a logit. Also issued with ``warnings.warn`` unless the method
        was made with ``quiet=True``.
    grid : the number of axes of the input's grid: 2 for images, 1 for signals, 3 for volumes and clips.
    contributions_by_layer : per layer, each channel's contribution ``C_k`` ``(N, K, h, w)``, whose sum over ``k``
        is the raw map before its ReLU; kept when the method was made with ``contributions=True``.
    """

    maps: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    method: str
    layers: list[str] = field(default_factory=list)
    raw_by_layer: dict[str, np.ndarray] = field(default_factory=dict)
    weights_by_layer: dict[str, np.ndarray] = field(default_factory=dict)
    logits: np.ndarray | None = None
    warnings: tuple[ExplanationWarning, ...] = ()
    grid: int = 2
    contributions_by_layer: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def layer(self) -> str | None:
        return self.layers[0] if self.layers else None

    @property
    def raw(self) -> np.ndarray | None:
        return self.raw_by_layer.get(self.layer) if self.layers else None

    @property
    def weights(self) -> np.ndarray | None:
        return self.weights_by_layer.get(self.layer) if self.layers else None

    @property
    def contributions(self) -> np.ndarray:
        """The first layer's per-channel contributions ``C_k`` ``(N, K, h, w)`` (``w_k A_k``); a ``ValueError``
        unless the method was made with ``contributions=True``."""
        if not self.contributions_by_layer:
            raise ValueError(
                f"this {self.method} explanation kept no contributions: make the method with contributions=True "
                "(they are as large as the layer's activations, so they are kept only when asked for)"
            )
        return self.contributions_by_layer[self.layers[0]]

    @property
    def pixel_space(self) -> bool:
        """Whether ``maps`` are input-space gradients ``(N, C, *grid)`` rather than heat maps ``(N, *grid)`` (or
        ``(N, T, *grid)`` for ``T`` targets per image, whose ``targets`` are ``(N, T)``)."""
        return self.maps.ndim == self.grid + 1 + self.targets.ndim

    def heatmaps(self) -> np.ndarray:
        """``(N, H, W)`` maps in [0, 1] (``(N, *grid)``): the maps themselves, or for pixel-space methods the
        normalised largest absolute gradient over colour channels."""
        if self.pixel_space:
            return ref.normalize(np.abs(self.maps).max(axis=1), grid=self.grid)
        return self.maps

    def _images_only(self, what: str) -> None:
        """A ``ValueError`` for ``what`` on the maps of signals or volumes, which are not pictures."""
        if self.grid != 2:
            kind = "signals (N, L)" if self.grid == 1 else "volumes (N, D, H, W)"
            raise ValueError(
                f"{what} draws images; these maps are of {kind}: use heatmaps() for the values, or show a slice "
                "(a volume's slices are images of their own)"
            )

    def overlay(self, images: Any, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
        """The heat maps blended over ``images`` as ``(N, H, W, 3)`` uint8.

        ``images``: ``(N, H, W, 3)`` or ``(N, 3, H, W)``, uint8 or floats in [0, 1], NumPy or a framework tensor.
        Images only: the maps of signals and volumes are refused.
        """
        self._images_only("overlay()")
        return ref.overlay(as_channels_last(images), self.heatmaps(), alpha=alpha, name=colormap)

    def image(self) -> np.ndarray:
        """Pixel-space maps as displayable ``(N, H, W, C)`` uint8 pictures (mid-grey is zero gradient)."""
        if not self.pixel_space:
            raise ValueError(f"{self.method} gives heat maps, not input-space gradients: use overlay() or colormap")
        self._images_only("image()")
        return ref.gradient_image(self.maps)

    def boxes(self, threshold: float = 0.15) -> list[tuple[int, ...]]:
        """Per image, the box ``(x0, y0, x1, y1)`` around the largest segment of the map above ``threshold * max``
        (``gradcam.reference.bounding_box``, computed for the whole batch at once); for volumes the box
        ``(x0, y0, z0, x1, y1, z1)`` (``z`` the depth or time axis, 26-connected segments), for signals the
        interval ``(x0, x1)``, one map at a time."""
        if self.grid != 2:
            return [ref.bounding_box(heatmap, threshold) for heatmap in self.heatmaps()]
        boxes = fast.bounding_boxes(self.heatmaps(), threshold).tolist()
        return [(x0, y0, x1, y1) for x0, y0, x1, y1 in boxes]

    def top_channels(self, k: int = 5) -> ChannelRanking:
        """The ``k`` most and least important channels per image by weight: the paper's textual explanation.

        Each channel of a late layer tends to detect one concept; naming the channels that push the class
        score up most (and down most) says which concepts the decision rests on.
        """
        if self.weights is None:
            raise ValueError(f"{self.method} has no channel weights to rank")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        order = np.argsort(-self.weights, axis=1, kind="stable")
        most = order[:, :k]
        least = order[:, ::-1][:, :k]
        weights = self.weights
        return ChannelRanking(
            most, np.take_along_axis(weights, most, axis=1), least, np.take_along_axis(weights, least, axis=1)
        )
