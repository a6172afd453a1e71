"""Finding a Keras model's layers by path, and seeing what a layer returns although Keras has no forward hooks.

Why this file exists:

* Keras 3 has no forward hooks, so a requested layer is observed by giving the layer object, for the
  duration of one trace, an instance attribute ``call`` that runs the class's own ``call`` and hands the
  output on (to a ``tf.GradientTape``, a shape record, a channel ablation). This works alike for Sequential,
  functional and subclassed models and for layers inside nested models, because every one of them reaches
  its layers through ``Layer.__call__``, which looks ``call`` up on the instance.
* The model is left as found: every attribute set on a layer is removed or put back in a ``finally``, also
  when the forward raises. They exist only while a trace runs (the first call per input shape); calling the
  same model from another thread at that moment is not supported.
* A nested layer is named by its path, ``"submodel/layer"``, outer before inner; a name that ends exactly one
  path is accepted too (``common.resolve_path``), and so is the layer object itself.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import keras

from gradcam.backends import common

EXPLAINS = "_gradcam_explains"
"""The attribute by which ``explained.Explained`` holds the model whose layers it lists as its own."""

Report = Callable[[list[str], Any], Any]
"""``report(names, output)``: sees a layer's output (and the paths it goes by) and returns what the call returns;
with ``at="input"``, sees the layer's first argument and returns what the layer is called with instead."""


def layer_paths(model: keras.Model) -> dict[str, keras.layers.Layer]:
    """``path -> layer`` for every layer reachable from the model, outer before inner."""
    paths: dict[str, keras.layers.Layer] = {}
    model = vars(model).get(EXPLAINS, model)

    def visit(layer: keras.layers.Layer, prefix: str) -> None:
        for child in _children(layer):
            path = prefix + child.name
            if path not in paths:
                paths[path] = child
                visit(child, path + "/")

    visit(model, "")
    return paths


def _children(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    # Keras 3 has no public accessor for the direct sublayers of an arbitrary layer (``.layers``
    # exists on models only); ``_flatten_layers`` is what ``Model.layers`` itself builds on.
    children = layer._flatten_layers(include_self=False, recursive=False)
    return [child for child in children if not isinstance(child, keras.layers.InputLayer)]


def resolve_layers(model: keras.Model, specs: list[Any]) -> dict[str, keras.layers.Layer]:
    """``path -> layer`` for the requested layers, in the order given, without repeats.

    Raises
    ------
    KeyError
        A name that is unknown (naming the closest) or ends several paths.
    ValueError
        A layer object that is not part of the model.
    TypeError
        A spec that is neither a name nor a layer.
    """
    paths = layer_paths(model)
    resolved: dict[str, keras.layers.Layer] = {}
    for spec in specs:
        path = _resolve_layer(paths, spec)
        resolved.setdefault(path, paths[path])
    return resolved


def _resolve_layer(paths: dict[str, keras.layers.Layer], spec: Any) -> str:
    if isinstance(spec, str):
        return common.resolve_path(paths, spec)
    if isinstance(spec, keras.layers.Layer):
        for path, layer in paths.items():
            if layer is spec:
                return path
        raise ValueError(
            f"the {type(spec).__name__} layer {spec.name!r} given as a layer is not part of this model; "
            "pass one of its layers or a name from layer_names(model)"
        )
    raise TypeError(f"a layer is a name, a 'submodel/layer' path or a layer of the model, got {type(spec).__name__}")


def channel_axis(layer: keras.layers.Layer | None = None) -> int:
    """The channel axis of a 4-D output of ``layer`` (its own ``data_format``, else Keras' global one)."""
    data_format = getattr(layer, "data_format", None) or keras.config.image_data_format()
    return -1 if data_format == "channels_last" else 1


@contextlib.contextmanager
def reporting_calls(layers: dict[str, keras.layers.Layer], report: Report, at: str = "output") -> Iterator[None]:
    """While open, each layer's ``call`` hands its output to ``report(names, output)`` and returns what that returns
    (``at="input"``: hands its first argument to ``report`` and runs on what that returns).

    A layer that goes by several paths is patched once and reports all of them.
    """
    wrap = _reporting_input if common.check_at(at) == "input" else _reporting
    names_of: dict[int, list[str]] = {}
    objects: dict[int, keras.layers.Layer] = {}
    for name, layer in layers.items():
        names_of.setdefault(id(layer), []).append(name)
        objects[id(layer)] = layer
    with contextlib.ExitStack() as stack:
        for key, layer in objects.items():
            stack.enter_context(instance_attribute(layer, "call", wrap(layer.call, names_of[key], report)))
        yield


def _reporting(call: Callable[..., Any], names: list[str], report: Report) -> Callable[..., Any]:
    def reporting_call(*args: Any, **kwargs: Any) -> Any:
        return report(names, call(*args, **kwargs))

    return reporting_call


def _reporting_input(call: Callable[..., Any], names: list[str], report: Report) -> Callable[..., Any]:
    def reporting_call(*args: Any, **kwargs: Any) -> Any:
        if not args:
            raise TypeError(f"layer {names[0]!r} is called without a positional input; choose a layer called on one")
        return call(report(names, args[0]), *args[1:], **kwargs)

    return reporting_call


@contextlib.contextmanager
def instance_attribute(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.name = value`` (bypassing Keras' attribute tracking), then put back exactly what was there."""
    had = name in vars(obj)
    previous = vars(obj).get(name)
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        if had:
            object.__setattr__(obj, name, previous)
        else:
            object.__delattr__(obj, name)
