"""Turning the command line's ``--model`` and ``--weights`` into a model, its backend and its preprocessing;
``ModelSpec`` carries those arguments to other processes, which load the model again."""
from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gradcam.batch.errors import JobError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKEND_ALIASES = {
    "torch": "torch", "pytorch": "torch", "tensorflow": "tensorflow", "keras": "tensorflow", "jax": "jax", "flax": "jax"
}


@dataclass
class LoadedModel:
    """A model ready for the command: what it is, how to feed it, and what to call its classes."""

    model: Any
    backend: str
    name: str
    image_size: tuple[int, int]
    prepare: Callable[[np.ndarray], np.ndarray]  # (N, H, W, 3) uint8 -> the model's input batch (NumPy)
    class_names: list[str] | None = None
    fc_layer: str | None = None
    layer: str | None = None


def scaled(
    layout: str, mean: tuple[float, ...] | None = None, std: tuple[float, ...] | None = None, scale: float = 1.0
) -> Callable[[np.ndarray], np.ndarray]:
    """``(N, H, W, 3)`` uint8 -> float32 in ``[0, scale]``, optionally standardised, in ``layout``.

    ``x = u * (scale / 255)``, then ``(x - mean_c) / std_c``, each in float32. The first step converts, scales and
    lays out in one pass, written straight in ``layout``: converting, scaling and transposing as three passes
    cost 0.27 ms per 224-px image, more than a third of a near-free model's whole Grad-CAM.
    """
    factor = np.float32(scale / 255.0)
    # per channel, shaped to broadcast over the channel axis of ``layout``
    shape = (3, 1, 1) if layout == "NCHW" else (3,)
    centre = None if mean is None else np.asarray(mean, np.float32).reshape(shape)
    spread = None if std is None else np.asarray(std, np.float32).reshape(shape)

    def prepare(images: np.ndarray) -> np.ndarray:
        images = np.asarray(images)
        source = images.transpose(0, 3, 1, 2) if layout == "NCHW" else images
        x = np.multiply(source, factor, dtype=np.float32, order="C")  # written in the layout's own order
        if centre is not None:
            x -= centre
            x /= spread
        return x

    return prepare


def _backend_name(backend: str | None, default: str = "torch") -> str:
    if backend is None:
        return default
    if backend not in BACKEND_ALIASES:
        raise JobError(f"unknown backend {backend!r}; choose one of torch, tensorflow, jax")
    return BACKEND_ALIASES[backend]


def _require(module: str, spec: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise JobError(f"--model {spec} needs the package {module!r}, which does not import here ({error})") from None


def _default(kind: str, backend: str | None) -> LoadedModel:
    from gradcam import models

    name = _backend_name(backend)
    layout = "NCHW" if name == "torch" else "NHWC"
    return LoadedModel(
        model=models.default_model(name, kind),
        backend=name,
        name=f"embedded {kind} model ({name})",
        image_size=(64, 64),
        prepare=scaled(layout),
        class_names=list(models.CLASSES),
        fc_layer="fc",
        layer=models.FEATURE_LAYER,
    )


def _torchvision(name: str, spec: str) -> LoadedModel:
    tv = _require("torchvision", spec)
    if not hasattr(tv.models, name):
        raise JobError(f"torchvision has no model {name!r}")
    model = getattr(tv.models, name)(weights=None).eval()
    return LoadedModel(model, "torch", spec, (224, 224), scaled("NCHW", IMAGENET_MEAN, IMAGENET_STD))


def _timm(name: str, spec: str) -> LoadedModel:
    timm = _require("timm", spec)
    try:
        model = timm.create_model(name, pretrained=False).eval()
    except RuntimeError as error:
        raise JobError(f"timm cannot build {name!r}: {error}") from None
    config = getattr(model, "pretrained_cfg", {}) or {}
    size = tuple(config.get("input_size", (3, 224, 224))[1:])
    mean, std = config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD)
    return LoadedModel(model, "torch", spec, size, scaled("NCHW", tuple(mean), tuple(std)))


def _keras_application(name: str, spec: str) -> LoadedModel:
    """A ``keras.applications`` model, built to output logits (``classifier_activation=None``): Grad-CAM explains
    the class score before the softmax, as the papers do, and the records' probability is its softmax."""
    keras = _require("keras", spec)
    builder = getattr(keras.applications, name, None)
    if builder is None:
        raise JobError(f"keras.applications has no model {name!r}")
    preprocess = next(
        (
            module.preprocess_input
            for module in vars(keras.applications).values()
            if hasattr(module, name) and hasattr(module, "preprocess_input") and module is not keras.applications
        ),
        None,
    )
    model = builder(weights=None, classifier_activation=None)
    size = tuple(model.input_shape[1:3])
    to_unit = scaled("NHWC", scale=255.0)
    prepare = (lambda images: np.asarray(preprocess(to_unit(images)))) if preprocess else to_unit
    return LoadedModel(model, "tensorflow", spec, size, prepare)


def _keras_file(path: Path) -> LoadedModel:
    keras = _require("keras", str(path))
    try:
        model = keras.models.load_model(path)
    except (OSError, ValueError) as error:
        raise JobError(f"cannot load the Keras model {path}: {error}") from None
    size = tuple(model.input_shape[1:3]) if None not in model.input_shape[1:3] else (224, 224)
    return LoadedModel(model, "tensorflow", str(path), size, scaled("NHWC"))


def _factory(spec: str) -> LoadedModel:
    location, _, function = spec.rpartition(":")
    # The user's module and function may raise anything (a syntax error, an import inside, a missing
    # argument): each becomes one line naming the spec, never a traceback.
    if location.endswith(".py"):
        path = Path(location)
        if not path.is_file():
            raise JobError(f"--model {spec}: no such file {path}")
        try:
            module_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(module_spec)
            module_spec.loader.exec_module(module)
        except Exception as error:  # noqa: BLE001 - see above
            raise JobError(f"--model {spec}: cannot run {path} ({_described(error)})") from None
    else:
        try:
            module = importlib.import_module(location)
        except Exception as error:  # noqa: BLE001 - see above
            raise JobError(f"--model {spec}: cannot import {location!r} ({_described(error)})") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise JobError(f"--model {spec}: {location} has no function {function!r}")
    try:
        model = factory()
    except Exception as error:  # noqa: BLE001 - see above
        raise JobError(f"--model {spec}: calling {function}() failed ({_described(error)})") from None
    from gradcam.backends import get_backend

    try:
        backend = get_backend(model).__name__.rsplit(".", 1)[-1]
    except TypeError as error:
        raise JobError(f"--model {spec}: {error}") from None
    return LoadedModel(model, backend, spec, (224, 224), scaled("NCHW" if backend == "torch" else "NHWC"))


def _described(error: BaseException) -> str:
    """An exception as ``Type: message`` on one line; a syntax error with its file and line."""
    if isinstance(error, SyntaxError):
        return f"SyntaxError: {error.msg} at {error.filename}, line {error.lineno}"
    return f"{type(error).__name__}: {' '.join(str(error).split())}"


def _on_device(loaded: LoadedModel, device: str) -> None:
    """Move the PyTorch model to ``device``, refusing a device name torch does not know or a GPU not here."""
    if loaded.backend != "torch":
        raise JobError("--device applies to PyTorch models only")
    import torch

    try:
        where = torch.device(device)
    except RuntimeError:
        raise JobError(f"--device {device}: not a PyTorch device; give e.g. cpu, cuda or cuda:1") from None
    if where.type == "cuda" and not torch.cuda.is_available():
        raise JobError(f"--device {device}: no CUDA GPU is available here (torch.cuda.is_available() is False)")
    if where.type == "cuda" and where.index is not None and where.index >= torch.cuda.device_count():
        raise JobError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    try:
        loaded.model = loaded.model.to(where)
    except (RuntimeError, AssertionError) as error:  # torch asserts for a backend it was not built with
        raise JobError(f"--device {device}: {_described(error)}") from None


def load_model(
    spec: str | None, weights: str | None = None, backend: str | None = None, device: str | None = None
) -> LoadedModel:
    """The model named by ``spec`` (see ``gradcam explain --help``) with ``weights`` loaded into it."""
    if spec in (None, "default", "biased"):
        loaded = _default(spec or "default", backend)
    elif spec.startswith("torchvision:"):
        loaded = _torchvision(spec.split(":", 1)[1], spec)
    elif spec.startswith("timm:"):
        loaded = _timm(spec.split(":", 1)[1], spec)
    elif spec.startswith("keras:"):
        loaded = _keras_application(spec.split(":", 1)[1], spec)
    elif spec.endswith(".keras"):
        if not Path(spec).is_file():
            raise JobError(f"--model {spec}: no such file")
        loaded = _keras_file(Path(spec))
    elif ":" in spec:
        loaded = _factory(spec)
    else:
        raise JobError(
            f"unknown model {spec!r}; give default, biased, torchvision:NAME, timm:NAME, keras:NAME, "
            "a .keras file, or a factory path/to/file.py:function or package.module:function"
        )
    if weights is not None:
        load_weights(loaded, Path(weights))
    if device is not None:
        _on_device(loaded, device)
    return loaded


def load_weights(loaded: LoadedModel, path: Path) -> None:
    """Load a PyTorch state_dict (``torch.load(weights_only=True)``) or Keras weights into the model."""
    if not path.is_file():
        raise JobError(f"--weights {path}: no such file")
    if loaded.backend == "torch":
        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - torch raises many kinds for a file that is not a state_dict
            raise JobError(f"--weights {path}: not a PyTorch state_dict ({type(error).__name__}: {error})") from None
        if not isinstance(state, dict):
            raise JobError(f"--weights {path}: expected a state_dict, found {type(state).__name__}")
        try:
            loaded.model.load_state_dict(state, strict=True)
        except RuntimeError as error:
            first = str(error).strip().splitlines()
            detail = " ".join(line.strip() for line in first[1:3]) if len(first) > 1 else first[0]
            raise JobError(f"--weights {path} do not fit the model: {detail}") from None
    elif loaded.backend == "tensorflow":
        try:
            loaded.model.load_weights(path)
        except (OSError, ValueError) as error:
            raise JobError(f"--weights {path} do not fit the model: {error}") from None
    else:
        raise JobError("--weights is supported for PyTorch and Keras models")


@dataclass(frozen=True)
class ModelSpec:
    """The command line's model arguments, with file paths made absolute, so another process can load the model."""

    model: str | None = None
    weights: str | None = None
    backend: str | None = None
    device: str | None = None

    @classmethod
    def from_arguments(
        cls, model: str | None, weights: str | None, backend: str | None, device: str | None
    ) -> ModelSpec:
        if model is not None:
            location, _, function = model.rpartition(":")
            if location.endswith(".py"):
                model = f"{os.path.abspath(location)}:{function}"
            elif model.endswith(".keras"):
                model = os.path.abspath(model)
        return cls(model, os.path.abspath(weights) if weights else None, backend, device)

    def load(self) -> LoadedModel:
        return load_model(self.model, self.weights, self.backend, self.device)
