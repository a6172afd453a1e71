"""``gradcam layers``: the model's layers in execution order, how each output reads, and the automatic choice.

The listing is of the model as it is explained (``backend.explained_model``: a compiled or wrapped module
unwrapped, a Hugging Face model's logits, a Keras softmax head taken off), under the layer names of the model
as given; the automatic layer is marked with ``*`` and the rule that chose it is said in one line below.
"""
from __future__ import annotations

import numpy as np

from gradcam.batch.errors import JobError
from gradcam.batch.job import one_line
from gradcam.batch.loading import LoadedModel


def run_layers(loaded: LoadedModel, size: tuple[int, int]) -> int:
    """Print every layer with its output shape and layout, the automatic one marked and explained; 0 on success.

    Raises
    ------
    JobError
        When the model cannot be listed on a blank image of ``size`` (one line, the model's own error named).
    """
    from gradcam.backends import backend_by_name

    backend = backend_by_name(loaded.backend)
    x = loaded.prepare(np.zeros((1, *size, 3), np.uint8))
    try:
        model, notes = backend.explained_model(loaded.model)
        chosen = backend.layer_choice(model, x)
        shapes = backend.layer_shapes(model, x)
    except (ValueError, KeyError) as error:
        raise JobError(one_line(error)) from None
    except Exception as error:  # noqa: BLE001 - the model's own code may raise anything; the user must see one line
        failure = f"{type(error).__name__}: {one_line(error)}"
        raise JobError(f"running the model on a blank {size[0]}x{size[1]} image failed: {failure}") from None
    width = max(len(name) for name, _ in shapes)
    shape_width = max(len(str(tuple(shape))) for _, shape in shapes)
    print(f"{loaded.name}, input {size[0]}x{size[1]}; * marks the automatic layer; the last column is how its "
          "output reads (NCHW, NHWC, tokens NTC:special tokens; '-': not a map)")
    for name, shape in shapes:
        mark = "*" if name == chosen.name else " "
        print(f"{mark} {name:<{width}}  {str(tuple(shape)):<{shape_width}}  {chosen.layouts.get(name, '-')}")
    print(f"automatic layer {chosen.name!r}: {chosen.why}")
    for note in notes:
        print(f"note: {note}")
    return 0
