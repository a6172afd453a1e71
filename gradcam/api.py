"""``gradcam.explain``: any method by name, in one call; ``gradcam.activations_and_gradients``: what the methods
start from, for building one's own."""
from __future__ import annotations

from typing import Any

from gradcam.backends.common import Target
from gradcam.backends.probe import Probe
from gradcam.explanation import Explanation
from gradcam.methods import METHODS, GradCAM, Method


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


def activations_and_gradients(model: Any, x: Any, layer: Any = None, target: Target = None, **options: Any) -> Probe:
    """A layer's activations ``A`` and the gradients ``G = dy/dA`` of the target score, as NumPy: what every
    gradient method starts from, for building one's own (one forward, one backward to the layer).

    The model is read as the methods read it (its framework's backend, a final softmax left out, ``output=``,
    a wrapper unwrapped), the layer chosen as they choose it (a name, an object, an index, a list; ``None``: the
    automatic layer) and laid out channels first, ``(N, K, h, w)`` (``layout=`` or ``reshape=`` as for a
    method). ``options`` are the methods' own: ``layout``, ``reshape``, ``output``, ``probability``, ``backend``.

    Returns a ``gradcam.backends.Probe``: ``activations[name]``, ``gradients[name]``, ``scores``, ``targets``,
    ``logits``, ``layers``, ``layouts``. For example, Grad-CAM by hand::

        p = gradcam.activations_and_gradients(model, x, "layer4")
        A, G = p.activations["layer4"], p.gradients["layer4"]
        L = gradcam.reference.grad_cam(A, G)   # ReLU(sum_k mean_ij(G_k) A_k)
    """
    # any layer method's probe is this one; Grad-CAM's adds nothing to it
    with GradCAM(model, layer, quiet=True, **options) as reader:
        return reader.probe(x, target)
