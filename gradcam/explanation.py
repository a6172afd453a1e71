"""The result every method returns: maps, the numbers behind them, and ways to look at them."""
from __future__ import annotations

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
        the mean of the per-layer maps, normalised again). Pixel-space methods (Guided Backprop, Deconvnet,
        Guided Grad-CAM) give ``(N, C, H, W)`` input-space gradients instead; see :meth:`image`.
    raw : (N, h, w) the first layer's map before upsampling and normalisation (``raw_by_layer`` has all).
    weights : (N, K) the first layer's channel weights, where the method has them (``weights_by_layer``).
    targets : (N,) the explained class per image (-1 where the target was a function).
    scores : (N,) the target's raw score per image.
    logits : (N, classes) the model's outputs when they are class scores, else None.
    layer : the (first) layer explained, as resolved from the request or chosen by default.
    layers : every layer explained.
    method : the method's name.
    """

    maps: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    method: str
    layers: list[str] = field(default_factory=list)
    raw_by_layer: dict[str, np.ndarray] = field(default_factory=dict)
    weights_by_layer: dict[str, np.ndarray] = field(default_factory=dict)
    logits: np.ndarray | None = None

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
    def pixel_space(self) -> bool:
        """Whether ``maps`` are input-space gradients ``(N, C, H, W)`` rather than heat maps ``(N, H, W)``."""
        return self.maps.ndim == 4

    def heatmaps(self) -> np.ndarray:
        """``(N, H, W)`` maps in [0, 1]: the maps themselves, or for pixel-space methods the normalised
        largest absolute gradient over colour channels."""
        if self.pixel_space:
            return ref.normalize(np.abs(self.maps).max(axis=1))
        return self.maps

    def overlay(self, images: Any, alpha: float = 0.5, colormap: str = "jet") -> np.ndarray:
        """The heat maps blended over ``images`` as ``(N, H, W, 3)`` uint8.

        ``images``: ``(N, H, W, 3)`` or ``(N, 3, H, W)``, uint8 or floats in [0, 1], NumPy or a framework tensor.
        """
        return ref.overlay(as_channels_last(images), self.heatmaps(), alpha=alpha, name=colormap)

    def image(self) -> np.ndarray:
        """Pixel-space maps as displayable ``(N, H, W, C)`` uint8 pictures (mid-grey is zero gradient)."""
        if not self.pixel_space:
            raise ValueError(f"{self.method} gives heat maps, not input-space gradients: use overlay() or colormap")
        return ref.gradient_image(self.maps)

    def boxes(self, threshold: float = 0.15) -> list[tuple[int, int, int, int]]:
        """Per image, the box ``(x0, y0, x1, y1)`` around the largest segment of the map above ``threshold * max``
        (``gradcam.reference.bounding_box``, computed for the whole batch at once)."""
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
