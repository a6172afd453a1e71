"""``gradcam.explain``: any method by name, in one call."""
from __future__ import annotations

from typing import Any

from gradcam.backends.common import Target
from gradcam.explanation import Explanation
from gradcam.methods import METHODS, Method


def _key(name: str) -> str:
    return name.lower().replace("plusplus", "++").translate(str.maketrans("", "", "-_ "))


_BY_KEY = {_key(name): cls for name, cls in METHODS.items()}


def method_class(name: str) -> type[Method]:
    """The method class for a name such as ``"gradcam++"``, ``"Grad-CAM"``, ``"guided_gradcam"``."""
    try:
        return _BY_KEY[_key(name)]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}") from None


def explain(
    model: Any, x: Any, method: str = "gradcam", layer: Any = None, target: Target = None, **options: Any
) -> Explanation:
    """Explain ``model``'s decision on the batch ``x`` with ``method`` (a name from ``gradcam.METHODS``).

    ``options`` go to the method's constructor (e.g. ``n_samples=`` for ``"smoothgradcam++"``,
    ``fc_layer=`` for ``"cam"``, ``counterfactual=True`` for ``"gradcam"``, ``reshape=`` for token layers).
    Pixel-space methods take no layer, except ``"guided-gradcam"``.
    """
    cls = method_class(method)
    if layer is not None:
        options["layer"] = layer
    return cls(model, **options)(x, target)
