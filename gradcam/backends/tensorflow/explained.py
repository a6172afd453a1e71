"""The Keras model as it is explained: one selected output, and the class score before a final softmax.

Why this file exists (issue 14): Keras applications end in ``classifier_activation="softmax"`` by default, so a
Grad-CAM of the model as built explains a probability, whose gradient mixes every class's logit (ResNet50's
map moved by 0.033), while the papers explain the class score. Rebuilding the model without its softmax would
rename or copy layers; instead ``Explained`` calls the user's model with the final layer's activation replaced
by the identity for the duration of the call (put back in a ``finally``, as the guided ReLUs are), so the
weights, the layers and their names are the user's own. It also selects one output of a model with several.

``Explained`` is a ``keras.Model`` whose layers are listed from the model it explains (``layers.layer_paths``
looks through it), so ``layer="conv5_block3_out"`` names the same layer as on the model as given.
"""
from __future__ import annotations

import contextlib
from typing import Any

import keras

from gradcam.backends import common
from gradcam.backends.tensorflow.layers import EXPLAINS, instance_attribute

_PROBABILITIES = {"softmax": keras.activations.softmax, "sigmoid": keras.activations.sigmoid}


class Explained(keras.Model):
    """Calls ``inner`` with ``final``'s probability activation replaced by the identity, and selects ``output``."""

    def __init__(self, inner: keras.Model, output: Any = None, final: keras.layers.Layer | None = None) -> None:
        super().__init__(name=inner.name)
        # not tracked as a sublayer: the layers are the inner model's, under their own names
        object.__setattr__(self, EXPLAINS, inner)
        object.__setattr__(self, "selected", output)
        object.__setattr__(self, "final", final)

    def call(self, inputs: Any, training: bool = False) -> Any:
        inner = getattr(self, EXPLAINS)
        with contextlib.ExitStack() as stack:
            if self.final is not None:
                stack.enter_context(_without_probability(self.final))
            outputs = inner(inputs, training=training)
        return common.select_output(outputs, self.selected)


def explained_model(model: keras.Model, output: Any = None, probability: bool = False) -> tuple[Any, tuple[str, ...]]:
    """The model to explain and notes: the class score before a final softmax/sigmoid (unless ``probability``),
    one output of several (``output``: a key or index).

    The final layer is the one that produces the output of a functional or Sequential model: a layer whose
    ``activation`` is softmax or sigmoid (``Dense(..., activation="softmax")``, ``Activation("softmax")``) or a
    ``Softmax`` layer. A subclassed model's final layer is not known before it runs; it is explained as it is.
    """
    notes: list[str] = []
    final = _final_probability_layer(model) if output is None else None
    if final is not None:
        kind = _probability_kind(final)
        if probability:
            notes.append(
                f"the explained score is a probability: the model's last layer {final.name!r} applies {kind}, whose "
                "gradient mixes every class's logit (the papers explain the logit before it)"
            )
            final = None
        else:
            notes.append(
                f"explaining the logit before the final {kind} (layer {final.name!r}); pass probability=True to "
                "explain the probability"
            )
    if output is not None:
        notes.append(f"explaining the model's output {output!r}")
    if final is None and output is None:
        return model, tuple(notes)
    return Explained(model, output, final), tuple(notes)


def _final_probability_layer(model: keras.Model) -> keras.layers.Layer | None:
    if not (isinstance(model, keras.Sequential) or type(model).__name__ == "Functional"):
        return None
    if len(model.outputs) != 1:
        return None
    final = model.outputs[0]._keras_history.operation
    return final if _probability_kind(final) else None


def _probability_kind(layer: Any) -> str | None:
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    activation = getattr(layer, "activation", None)
    return next((kind for kind, fn in _PROBABILITIES.items() if activation is fn), None)


def _without_probability(layer: keras.layers.Layer) -> Any:
    if isinstance(layer, keras.layers.Softmax):
        return instance_attribute(layer, "call", _identity)
    return instance_attribute(layer, "activation", keras.activations.linear)


def _identity(inputs: Any, *args: Any, **kwargs: Any) -> Any:
    return inputs
