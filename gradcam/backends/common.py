"""Checks and rules every backend applies the same way (NumPy only, no framework)."""
from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from typing import Any, Union

import numpy as np

Target = Union[None, int, Sequence[int], np.ndarray, Callable[[Any], Any]]


def class_targets(target: Target, logits: np.ndarray) -> np.ndarray:
    """Resolve ``None | int | sequence`` to one class index per image, checked against ``logits``.

    ``None`` means the top-1 class of each image. Raises ``ValueError`` with the valid range when
    an index is out of range or the number of targets differs from the batch size.
    """
    if logits.ndim != 2:
        raise ValueError(
            f"the model's output has shape {tuple(logits.shape)}, not (N, classes); "
            "give target= a callable that maps the output to one score per image"
        )
    n, n_classes = logits.shape
    if target is None:
        return np.argmax(logits, axis=1).astype(np.int64)
    targets = np.asarray(target)
    if targets.dtype.kind not in "iu":
        raise ValueError(f"class targets must be integers, got {target!r}")
    if targets.ndim == 0:
        targets = np.full(n, int(targets), dtype=np.int64)
    if targets.shape != (n,):
        raise ValueError(f"got {targets.size} targets for a batch of {n} images; give one int or {n}")
    bad = (targets < 0) | (targets >= n_classes)
    if bad.any():
        raise ValueError(
            f"class index {int(targets[bad][0])} is out of range: valid classes are 0..{n_classes - 1}"
        )
    return targets.astype(np.int64)


def check_input(x: np.ndarray) -> None:
    """Refuse input that would give a silent wrong map: non-finite values or too few dimensions."""
    if x.ndim < 3:
        raise ValueError(
            f"expected a batch of images (N, C, H, W) or (N, H, W, C), got shape {tuple(x.shape)}"
        )
    if not np.isfinite(x).all():
        raise ValueError("the input contains NaN or Inf values; explanations of non-finite input are refused")


def unknown_layer_error(name: str, names: Sequence[str]) -> KeyError:
    """A ``KeyError`` naming the closest real layer names."""
    close = difflib.get_close_matches(name, list(names), n=5, cutoff=0.4)
    hint = f"; closest: {', '.join(close)}" if close else f"; the model has {len(names)} layers (see layer_names)"
    return KeyError(f"no layer named {name!r}{hint}")


def non_spatial_error(name: str, shape: tuple[int, ...]) -> ValueError:
    """A ``ValueError`` for a layer whose output is not a ``(N, C, h, w)`` map."""
    return ValueError(
        f"layer {name!r} has output shape {tuple(shape)}, which is not a spatial map (N, C, h, w); "
        "choose a convolutional layer, or pass reshape= to turn tokens into a grid "
        "(gradcam.vit_reshape for (N, 1 + h*w, C) tokens with a class token)"
    )


def layer_list(layers: Any) -> list[Any]:
    """A single layer spec or a list of them, as a list."""
    if layers is None:
        return []
    if isinstance(layers, (list, tuple)):
        return list(layers)
    return [layers]


def canonical_map(name: str, array: np.ndarray, reshape: Callable[[np.ndarray], np.ndarray] | None) -> np.ndarray:
    """A layer output (or its gradient) as ``(N, K, h, w)`` float32, after the user's ``reshape``.

    ``reshape`` acts on NumPy arrays and is applied alike to activations and gradients: a pure
    re-layout of values commutes with differentiation, so the gradient of the re-laid-out tensor is
    the re-laid-out gradient.
    """
    if reshape is not None:
        array = np.asarray(reshape(array))
    if array.ndim != 4 or array.shape[2] * array.shape[3] < 2:
        raise non_spatial_error(name, array.shape)
    return np.ascontiguousarray(array, dtype=np.float32)


def vit_reshape(tokens: np.ndarray, grid: tuple[int, int] | None = None, class_tokens: int = 1) -> np.ndarray:
    """ViT tokens ``(N, class_tokens + h*w, C)`` -> a channels-first grid ``(N, C, h, w)``.

    The leading ``class_tokens`` tokens are dropped; ``grid`` defaults to the square grid
    ``h = w = sqrt(number of patch tokens)``.
    """
    if tokens.ndim != 3:
        raise ValueError(f"vit_reshape expects tokens of shape (N, tokens, C), got {tuple(tokens.shape)}")
    patches = tokens[:, class_tokens:, :]
    n, t, c = patches.shape
    if grid is None:
        side = int(round(t ** 0.5))
        if side * side != t:
            raise ValueError(f"{t} patch tokens do not form a square grid; pass grid=(h, w)")
        grid = (side, side)
    h, w = grid
    if h * w != t:
        raise ValueError(f"grid {grid} does not hold {t} patch tokens")
    return patches.reshape(n, h, w, c).transpose(0, 3, 1, 2)
