"""Flax ``nnx`` modules: the same probe as for ``linen``, on a copy of the module made inside the trace.

Why this file exists (issue 14): an ``nnx.Module`` is a stateful Python object, not a pure function with its
variables beside it, and ``linen``'s ``intercept_methods`` does not see its calls. So the module is split once
into its graph definition (the structure, hashable: the cache key of the compiled probe) and its state (the
arrays: an argument of the compiled function), and every trace ``merge``s the two into a fresh copy. The copy's
submodules report their outputs by patching, for the duration of the call only, the ``__call__`` of the classes
that define it (put back in a ``finally``); a call reports only for an instance of the copy, by identity, so
other modules of the same class are untouched. The user's module is never called, changed or put in train mode.

Layers are the submodules' attribute paths, ``"blocks/0"`` for an item of a list, as for ``linen``.
"""
from __future__ import annotations

import collections
import contextlib
import sys
from collections.abc import Callable, Iterator
from typing import Any

from gradcam.backends import inputs as multi

OnOutput = Callable[[str, int, Any], Any]


def is_nnx_module(obj: Any) -> bool:
    """Whether ``obj`` is a Flax ``nnx.Module`` (only if ``flax.nnx`` was imported: nothing is imported here)."""
    nnx = sys.modules.get("flax.nnx")
    return nnx is not None and isinstance(obj, nnx.Module)


def split(module: Any) -> tuple[Any, Any]:
    """``(graphdef, state)`` of an ``nnx.Module``: its hashable structure and its arrays."""
    from flax import nnx

    return nnx.split(module)


def module_paths(module: Any) -> dict[str, Any]:
    """``"a/b" -> submodule`` for every submodule, the module itself excluded."""
    from flax import nnx

    return {"/".join(map(str, path)): sub for path, sub in nnx.iter_modules(module) if path}


def forward(graphdef: Any, state: Any, x: Any, on_output: OnOutput | None = None) -> Any:
    """The outputs of the module that ``graphdef`` and ``state`` make; each submodule's output passes through
    ``on_output(name, call_index, output)``."""
    from flax import nnx

    module = nnx.merge(graphdef, state)
    if on_output is None:
        return multi.called(module, x)
    with _reporting(module_paths(module), on_output):
        return multi.called(module, x)


@contextlib.contextmanager
def _reporting(modules: dict[str, Any], on_output: OnOutput) -> Iterator[None]:
    """While open, a call of one of ``modules`` (by identity) hands its output to ``on_output``."""
    names = {id(sub): name for name, sub in modules.items()}
    calls: collections.Counter[str] = collections.Counter()
    # the class in each module's MRO that defines __call__: patching it reaches its subclasses that inherit it
    owners = {_call_owner(type(sub)) for sub in modules.values()} - {None}
    originals = {owner: owner.__dict__["__call__"] for owner in owners}

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def reporting_call(self: Any, *args: Any, **kwargs: Any) -> Any:
            output = original(self, *args, **kwargs)
            name = names.get(id(self))
            if name is None:
                return output
            calls[name] += 1
            return on_output(name, calls[name] - 1, output)

        return reporting_call

    try:
        for owner, original in originals.items():
            type.__setattr__(owner, "__call__", wrap(original))
        yield
    finally:
        for owner, original in originals.items():
            type.__setattr__(owner, "__call__", original)


def _call_owner(cls: type) -> type | None:
    """The class that defines ``cls.__call__`` (``None`` for a container such as ``nnx.List``)."""
    return next((klass for klass in cls.__mro__[:-1] if "__call__" in klass.__dict__), None)
