"""Models with several inputs: which one a map is about, and the others carried along (NumPy only, no framework).

An image + metadata model takes ``model(image, meta)``; a map explains one of its inputs, the *explained* input,
and every other input goes to the model unchanged. ``x`` is one batch, a tuple of batches (or a list of batches
of different shapes; the model is called with them in order), or a dict of batches (called by keyword);
``Inputs`` holds that structure with the explained one named, so that one object travels from a method through a
backend (the contract's ``x``) without any backend function taking a new parameter.

Every part is a batch of the same ``N`` rows: row ``n`` of every part is example ``n``. Copies made of the
explained input (noisy, masked, occluded rows of image ``n``) take row ``n`` of every other part (``replaced``).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

Key = int | str


class Inputs:
    """The inputs of one call: ``parts`` (a tuple, or a dict by name) and ``key``, the explained one.

    Parameters
    ----------
    parts : a tuple or list of batches (called positionally) or a dict of batches (called by keyword), each with
        the batch on axis 0 and the same number of rows ``N``.
    key : the explained input: an index into a tuple, a key of a dict; ``None``: the first.

    Raises
    ------
    ValueError
        An unknown key or index (naming the valid ones), no parts, or parts whose batch sizes differ.
    """

    def __init__(self, parts: Sequence[Any] | Mapping[str, Any], key: Key | None = None) -> None:
        self.by_name = isinstance(parts, Mapping)
        self.parts: dict[Key, Any] = dict(parts) if self.by_name else dict(enumerate(parts))
        if not self.parts:
            raise ValueError("the model's inputs are empty; give at least one input batch")
        self.key = resolve_key(list(self.parts), key, self.by_name)
        sizes = {name: _rows(part) for name, part in self.parts.items()}
        if len(set(sizes.values())) > 1:
            listed = ", ".join(f"{name!r}: {n}" for name, n in sizes.items())
            raise ValueError(f"every input must hold the same number of examples (axis 0), got {listed}")

    @property
    def explained(self) -> Any:
        """The explained input's batch, as given."""
        return self.parts[self.key]

    @property
    def shape(self) -> tuple[int, ...]:
        """The explained input's shape (a method finds its default layer once per input shape)."""
        return tuple(getattr(self.explained, "shape", None) or np.shape(self.explained))

    def others(self) -> dict[Key, Any]:
        """Every input but the explained one, by key."""
        return {name: part for name, part in self.parts.items() if name != self.key}

    def replaced(self, explained: Any, rows: Any = None) -> Inputs:
        """These inputs with the explained one replaced by ``explained`` and every other one's rows ``rows``
        taken (``None``: all): the copies of example ``rows[m]`` in row ``m``."""
        parts = {name: (part if rows is None else part[rows]) for name, part in self.others().items()}
        parts[self.key] = explained
        return self._rebuilt(parts)

    def take(self, rows: Any) -> Inputs:
        """Rows ``rows`` (an index array or a slice) of every input."""
        return self._rebuilt({name: part[rows] for name, part in self.parts.items()})

    def converted(self, convert: Callable[[Any], Any]) -> Inputs:
        """These inputs with ``convert`` applied to every input but the explained one (to the framework's own
        arrays)."""
        parts = {name: convert(part) for name, part in self.others().items()}
        parts[self.key] = self.explained
        return self._rebuilt(parts)

    def call(self, model: Callable[..., Any], explained: Any, **options: Any) -> Any:
        """``model(*parts)`` or ``model(**parts)`` with ``explained`` in the explained input's place."""
        parts = {**self.parts, self.key: explained}
        if self.by_name:
            return model(**parts, **options)
        return model(*(parts[i] for i in range(len(parts))), **options)

    def structure(self, explained: Any) -> list[Any] | dict[str, Any]:
        """The parts as one list (in order) or dict, with ``explained`` in the explained input's place: what a
        Keras functional model with several inputs is called with."""
        parts = {**self.parts, self.key: explained}
        if self.by_name:
            return parts
        return [parts[i] for i in range(len(parts))]

    def _rebuilt(self, parts: dict[Key, Any]) -> Inputs:
        ordered = {name: parts[name] for name in self.parts}
        return Inputs(ordered if self.by_name else list(ordered.values()), self.key)

    def __repr__(self) -> str:
        shapes = {name: tuple(np.shape(part)) for name, part in self.parts.items()}
        return f"Inputs({shapes}, explained={self.key!r})"


def resolve_key(names: list[Key], key: Key | None, by_name: bool) -> Key:
    """The explained input's key among ``names``: ``key``, or the first for ``None``; an int counts positions also
    in a dict (``input=0``: its first entry).

    Raises
    ------
    ValueError
        A key or index that names no input, with the valid ones.
    """
    if key is None:
        return names[0]
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        if -len(names) <= key < len(names):
            return names[int(key)]
        raise ValueError(f"input={key!r} is out of range: the model has {len(names)} inputs (0..{len(names) - 1})")
    if by_name and key in names:
        return key
    valid = f"one of {names} or an index 0..{len(names) - 1}" if by_name else f"an index 0..{len(names) - 1}"
    raise ValueError(f"input={key!r} names no input of the model; give {valid}")


def is_structure(x: Any) -> bool:
    """Whether ``x`` holds several inputs: an ``Inputs``, a dict, a tuple of arrays, or a list of arrays that
    differ in shape (an image and its metadata). A list of arrays of one shape is one batch, stacked, as it was
    before models could take several inputs (a list of images); a nested list of numbers is one batch too. Give
    inputs of one shape (two images) as a tuple."""
    if isinstance(x, (Inputs, Mapping)):
        return True
    if not isinstance(x, (tuple, list)) or not x or not all(hasattr(part, "shape") for part in x):
        return False
    return isinstance(x, tuple) or len({tuple(part.shape) for part in x}) > 1


def read(x: Any, key: Key | None = None) -> Inputs:
    """``x`` as ``Inputs``: itself, a structure with ``key`` explained, or one batch as the only input.

    Raises
    ------
    ValueError
        ``key`` for a single batch other than ``None``, ``0`` or ``-1``, and the reasons of ``Inputs``.
    """
    if isinstance(x, Inputs):
        return x if key is None else Inputs(x.parts if x.by_name else list(x.parts.values()), key)
    if is_structure(x):
        return Inputs(x, key)
    return Inputs([x], key)


def wrapped(x: Any, key: Key | None = None) -> Any:
    """What a method hands its backend: ``x`` itself when it is one batch and no input is named, else ``read``'s
    ``Inputs`` (so that single-input models take the path they always took)."""
    if key is None and not is_structure(x):
        return x
    return read(x, key)


def explained(x: Any) -> Any:
    """The explained input of ``x`` (``x`` itself for one batch)."""
    return x.explained if isinstance(x, Inputs) else x


def replaced(x: Any, batch: Any, rows: Any = None) -> Any:
    """``x`` with the explained input replaced by ``batch`` and every other input's rows ``rows`` taken (``batch``
    itself when ``x`` is one batch): the inputs of copies of examples ``rows``."""
    return x.replaced(batch, rows) if isinstance(x, Inputs) else batch


def _rows(part: Any) -> int:
    shape = part.shape if hasattr(part, "shape") else np.shape(part)
    if len(shape) == 0:
        raise ValueError("every input must be a batch with the examples on axis 0, got a scalar")
    return int(shape[0])


def parts_map(function: Callable[[Any], Any], batch: Any) -> Any:
    """``function`` applied to ``batch``, or to each array of a list, tuple or dict of them (the same structure
    back): a compiled model's several inputs are sliced, padded and converted alike."""
    if isinstance(batch, Mapping):
        return {name: function(part) for name, part in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(function(part) for part in batch)
    return function(batch)


def parts_rows(batch: Any) -> int:
    """The number of rows of ``batch``, or of the first array of a list, tuple or dict of them."""
    if isinstance(batch, Mapping):
        return _rows(next(iter(batch.values())))
    if isinstance(batch, (list, tuple)):
        return _rows(batch[0])
    return _rows(batch)


def called(function: Callable[..., Any], batch: Any, *before: Any, **options: Any) -> Any:
    """``function(*before, *batch, **options)`` for a list or tuple of inputs, ``function(*before, **batch,
    **options)`` for a dict, ``function(*before, batch, **options)`` for one batch: how a compiled model's
    several inputs reach it (a Flax ``apply(variables, image, meta)``)."""
    if isinstance(batch, Mapping):
        return function(*before, **batch, **options)
    if isinstance(batch, (list, tuple)):
        return function(*before, *batch, **options)
    return function(*before, batch, **options)
