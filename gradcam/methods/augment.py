"""Test-time augmentation smoothing (pytorch-grad-cam's ``aug_smooth``): any method's maps averaged over
flipped and shifted copies of the batch, each mapped back onto the original image first.

A map that moves with the image where the evidence moves, and not elsewhere, is kept by the average; specks that
depend on the exact pixel grid (the stride of the layer, a checkerboard of the upsampling) are not. pytorch-grad-cam
draws its copies with ttach (horizontal flips times brightness factors 0.9, 1, 1.1); here the copies are flips and
small shifts, the transforms whose inverse is known for the map.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from gradcam.backends import inputs as multi
from gradcam.backends.common import Target
from gradcam.explanation import Explanation
from gradcam.methods.base import Method
from gradcam.reference import fast


def transform_indices(length: int, shift: int, flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Index arrays along one axis of ``length`` pixels: ``forward`` makes the copy (content moved by ``shift``
    pixels, the edge pixel repeated into the gap, then mirrored if ``flip``), ``back`` maps the copy's map onto
    the original pixels: ``copy = image[forward]``, ``map = copy_map[back]``. Positions whose content was shifted
    out of the copy take the nearest edge of the copy's map.
    """
    positions = np.arange(length)
    shifted = np.clip(positions - shift, 0, length - 1)
    forward = shifted[::-1] if flip else shifted
    back = np.clip(positions + shift, 0, length - 1)
    return forward, (length - 1 - back if flip else back)


class AugmentSmooth:
    """``method``'s explanation averaged over copies of the batch: each of ``shifts`` (pixels ``(down, right)``),
    each also mirrored left-right when ``flip``; every copy's map is mirrored and shifted back, the maps averaged
    and normalized again (heat maps), or averaged only (input-space gradients).

    The first copy is the batch itself (``(0, 0)`` is always included): its explanation gives the targets that
    every other copy is explained for, and everything in the result but ``maps`` and ``method``
    (``"<method>+aug"``). Cost: one call of ``method`` per copy, ``len(shifts) * (2 if flip else 1)`` in all.

    Parameters
    ----------
    method : any method, e.g. ``GradCAM(model, layer)``.
    flip : also explain the left-right mirror of every copy.
    shifts : the shifts in pixels ``(down, right)``; each must be smaller than the image.
    """

    def __init__(
        self, method: Method, *, flip: bool = True, shifts: Sequence[tuple[int, int]] = ((0, 0), (4, 4), (-4, -4))
    ) -> None:
        if not isinstance(method, Method):
            raise ValueError(f"AugmentSmooth wraps a gradcam method (GradCAM(model, layer), ...), got {method!r}")
        self.method, self.flip = method, bool(flip)
        pairs = [(int(dy), int(dx)) for dy, dx in shifts]
        self.shifts = [(0, 0)] + [pair for pair in dict.fromkeys(pairs) if pair != (0, 0)]
        self.name = f"{method.name}+aug"

    def __call__(self, x: Any, target: Target = None) -> Explanation:
        x = self.method.inputs(x)  # with several inputs, the explained one is shifted and flipped
        images = self.method.backend.to_numpy(x)
        if images.ndim != 4:
            raise ValueError(
                f"AugmentSmooth shifts and flips images: it needs a batch of images (N, C, H, W) or (N, H, W, C), got "
                f"shape {images.shape}; signals (N, C, L) and volumes (N, C, D, H, W) are not supported"
            )
        channels_last = self.method.backend.input_channel_axis(self.method.model) != 1
        H, W = images.shape[1:3] if channels_last else images.shape[2:4]
        if any(abs(dy) >= H or abs(dx) >= W for dy, dx in self.shifts):
            raise ValueError(f"every shift must be smaller than the image ({H} x {W} pixels), got {self.shifts}")
        clean = self.method(x, target)
        copy_target = target if callable(target) else clean.targets
        maps = []
        axis = 1 if channels_last else 2  # the rows of the images; their columns follow
        for dy, dx in self.shifts:
            rows_in, rows_back = transform_indices(H, dy, False)
            for flip in (False, True) if self.flip else (False,):
                if (dy, dx, flip) == (0, 0, False):
                    maps.append(clean.maps)
                    continue
                cols_in, cols_back = transform_indices(W, dx, flip)
                copy = np.take(np.take(images, rows_in, axis=axis), cols_in, axis=axis + 1)
                # (N, H, W) or (N, C, H, W): pixels last
                copy_maps = self.method(multi.replaced(x, copy), copy_target).maps
                maps.append(np.take(np.take(copy_maps, rows_back, axis=-2), cols_back, axis=-1))
        mean = np.mean(maps, axis=0, dtype=np.float64).astype(np.float32)
        return dataclasses.replace(
            clean, maps=mean if clean.pixel_space else fast.normalize(mean), method=self.name
        )

    def __repr__(self) -> str:
        return f"AugmentSmooth({self.method!r}, flip={self.flip}, shifts={self.shifts})"
