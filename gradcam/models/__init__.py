"""The embedded default model: a small CNN trained on the synthetic shapes, in PyTorch, Keras and Flax.

The weights ship in the package as framework-neutral ``.npz`` files (``default.npz``: trained on
the one-object split; ``biased.npz``: trained on the biased split, where a corner mark gives the
class "circle" away). ``python -m gradcam.models.train`` reproduces them. One weight dict builds
the same network in every framework (``gradcam.models.architecture`` describes both), and the
three give the same logits to float32 precision::

    model = gradcam.models.default_model("torch")           # torch.nn.Module, NCHW in [0, 1]
    model = gradcam.models.default_model("tensorflow")      # keras.Model, NHWC in [0, 1]
    module, variables = gradcam.models.default_model("jax")  # flax.linen.Module, NHWC in [0, 1]

The last spatial stage, the default Grad-CAM layer, is named ``"features"`` in all three
(``FEATURE_LAYER``). This module imports no framework; ``default_model`` imports the one asked for.

Measured on 1000 held-out images of each split (``make_split(..., seed=100, train=False)``):

- default: 99.9% accurate on one-object images, 99.1% on multi-instance ones. In the pointing game
  (Grad-CAM's maximum within 2 pixels of the object's box, Zhang et al.'s tolerance scaled to 64
  pixels) it hits on 96.5% of one-object images; strictly inside the box on 89%, within 4 pixels
  (half a feature cell) on 99%: the maximum of the upsampled 8x8 map falls on a cell centre, often a
  pixel or two past a small object's edge.
- biased: never calls an unmarked circle a circle (0%), calls 49% of marked non-circles "circle",
  79% accurate on unmarked images and 59% on marked ones; on a marked image its "circle"
  evidence comes from the top-left corner.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np

from gradcam.datasets.shapes import CLASSES
from gradcam.models.architecture import FEATURE_LAYER, random_weights

__all__ = [
    "CLASSES",
    "FEATURE_LAYER",
    "KINDS",
    "BACKENDS",
    "default_model",
    "load_weights",
    "weights_path",
    "random_weights",
]

KINDS: tuple[str, ...] = ("default", "biased")
# backend name (as in gradcam.backends) and its aliases -> builder module
BACKENDS: dict[str, str] = {
    "torch": "gradcam.models.torch_net",
    "pytorch": "gradcam.models.torch_net",
    "tensorflow": "gradcam.models.keras_net",
    "keras": "gradcam.models.keras_net",
    "jax": "gradcam.models.flax_net",
    "flax": "gradcam.models.flax_net",
}


def weights_path(kind: str = "default") -> Path:
    """Where the packaged weights of ``kind`` (``"default"`` or ``"biased"``) lie."""
    if kind not in KINDS:
        raise ValueError(f"unknown model kind {kind!r}; kinds are {', '.join(KINDS)}")
    return Path(__file__).parent / f"{kind}.npz"


def load_weights(kind: str = "default") -> dict[str, np.ndarray]:
    """The packaged weights of ``kind`` as a dict of float32 arrays (format: ``gradcam.models.architecture``)."""
    path = weights_path(kind)
    if not path.is_file():
        raise FileNotFoundError(
            f"the packaged weights {path} are missing; rebuild them with "
            f"`python -m gradcam.models.train --kind {kind} --out {path}`"
        )
    with np.load(path) as data:
        return {name: data[name].astype(np.float32) for name in data.files}


def default_model(backend: str = "torch", kind: str = "default") -> Any:
    """The embedded model, trained on the synthetic shapes (``CLASSES``), for one framework.

    Parameters
    ----------
    backend
        ``"torch"`` (a ``torch.nn.Module`` in eval mode, NCHW), ``"tensorflow"`` / ``"keras"``
        (a Keras functional model, NHWC) or ``"jax"`` / ``"flax"`` (the pair
        ``(flax.linen.Module, variables)``, NHWC). Every variant takes float32 images in ``[0, 1]``.
    kind
        ``"default"`` (trained on one-object images) or ``"biased"`` (trained where a corner mark
        goes with "circle": a model that relies on a spurious cue).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    weights = load_weights(kind)
    return importlib.import_module(BACKENDS[backend]).build(weights)
