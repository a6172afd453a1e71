"""The settings of a run, kept in its output folder so that a resumed run adds records of the same kind.

A run writes ``settings.json`` when it starts, before any record: the model (its name, or the absolute path
of a model file or factory), its framework, a SHA-256 of the ``--weights`` file, the methods, the layer, the
class explained (``--class-id``), the input size, the method options that apply, and what it saves (PNG
pictures, ``.npz`` shards). Running again into the folder resumes only with the same settings; with others
the command refuses with one line naming each difference (``--overwrite``, or another folder, starts over).
Otherwise a second run with another method would skip every image already recorded and end with a summary
naming settings that produced none of its records.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gradcam.batch.errors import JobError
from gradcam.batch.layout import OutputLayout
from gradcam.batch.loading import LoadedModel, ModelSpec
from gradcam.batch.records import check_regular, iter_records, written_whole

# each setting as the command line spells it, for the message that names a difference
LABELS = {
    "model": "--model",
    "backend": "--backend",
    "weights_sha256": "--weights (SHA-256)",
    "methods": "--method",
    "layer": "--layer",
    "class_id": "--class-id",
    "image_size": "--image-size",
    "options": "method options (--fc-layer, --n-samples, --noise-level)",
    "pictures": "PNG pictures (--save-maps)",
    "shards": ".npz shards (--npz-shards)",
}


def file_sha256(path: str) -> str:
    """The SHA-256 of a file's bytes, in hex."""
    try:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha256").hexdigest()
    except OSError as error:
        raise JobError(f"--weights {path}: cannot be read ({error.strerror})") from None


def model_identity(loaded: LoadedModel, spec: ModelSpec | None) -> str:
    """What names the model in the settings: the absolute path of a model file or factory (the same from any
    working folder), else the loaded model's name (``embedded default model (torch)``, ``timm:resnet50``)."""
    if spec is not None and spec.model not in (None, "default", "biased"):
        return spec.model
    return loaded.name


@dataclass(frozen=True)
class RunSettings:
    """What decides the records and files of a run (see the module docstring); ``LABELS`` names each field."""

    model: str
    backend: str
    weights_sha256: str | None
    methods: tuple[str, ...]
    layer: str | None
    class_id: int | None
    image_size: tuple[int, int]
    pictures: bool
    shards: bool
    options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(
        cls,
        loaded: LoadedModel,
        spec: ModelSpec | None,
        methods: tuple[str, ...],
        layer: str | None,
        class_id: int | None,
        image_size: tuple[int, int],
        method_options: dict[str, Any],
        pictures: bool,
        shards: bool,
    ) -> RunSettings:
        """The settings of a run of ``methods`` on ``loaded`` (the model's own defaults filled in)."""
        options: dict[str, Any] = {}
        if "cam" in methods:
            options["fc_layer"] = method_options.get("fc_layer") or loaded.fc_layer
        if "smoothgradcam++" in methods:
            options.update(n_samples=method_options.get("n_samples"), noise_level=method_options.get("noise_level"))
        weights = spec.weights if spec is not None else None
        return cls(
            model=model_identity(loaded, spec),
            backend=loaded.backend,
            weights_sha256=file_sha256(weights) if weights else None,
            methods=tuple(methods),
            layer=layer or loaded.layer,
            class_id=class_id,
            image_size=(int(image_size[0]), int(image_size[1])),
            pictures=pictures,
            shards=shards,
            options=options,
        )

    def as_json(self) -> dict[str, Any]:
        """The settings as JSON values (tuples as lists), as ``settings.json`` and ``summary.json`` hold them."""
        return json.loads(json.dumps(asdict(self)))

    def differences(self, earlier: dict[str, Any]) -> list[str]:
        """One phrase per setting in which ``earlier`` (read from ``settings.json``) differs from these;
        the order of the methods does not matter."""
        current = self.as_json()
        phrases = []
        for name, value in current.items():
            before = earlier.get(name)
            if name == "methods" and isinstance(before, list):
                same = sorted(map(str, before)) == sorted(value)
            else:
                same = before == value
            if not same:
                phrases.append(f"{LABELS[name]} {_shown(name, before)} there, {_shown(name, value)} now")
        return phrases


def _shown(name: str, value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if name == "weights_sha256":
        return f"{value[:12]}..."
    if name == "image_size" and isinstance(value, list):
        return "x".join(map(str, value))
    if isinstance(value, list):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ", ".join(f"{key}={item}" for key, item in sorted(value.items())) or "none"
    return str(value)


def read_settings(folder: Path) -> dict[str, Any] | None:
    """The settings an earlier run wrote into ``folder`` (None when there are none)."""
    path = OutputLayout(folder).settings
    if not check_regular(path):
        return None
    try:
        settings = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        settings = None
    if not isinstance(settings, dict):
        raise JobError(f"{path} is not the settings of a run; start over with --overwrite, or choose another "
                       "--output-dir")
    return settings


def check_settings(folder: Path, settings: RunSettings) -> None:
    """Refuse (``JobError``, one line) to resume the run in ``folder`` with other ``settings``.

    A folder with records but no ``settings.json`` (written by a gradcam before settings were kept) is refused
    too: its settings are unknown.
    """
    earlier = read_settings(folder)
    if earlier is None:
        if next(iter_records(OutputLayout(folder).records), None) is not None:
            raise JobError(
                f"{folder} holds records but no {OutputLayout.SETTINGS} (an older gradcam wrote them), so their "
                "settings are unknown; start over with --overwrite, or choose another --output-dir"
            )
        return
    differences = settings.differences(earlier)
    if differences:
        raise JobError(
            f"{folder} holds a run with other settings ({'; '.join(differences)}): run again with the same "
            "settings to resume, start over with --overwrite, or choose another --output-dir"
        )


def write_settings(folder: Path, settings: RunSettings) -> None:
    """``settings.json``, written whole (a temporary file renamed into place)."""
    with written_whole(OutputLayout(folder).settings) as file:
        file.write((json.dumps(settings.as_json(), indent=2, sort_keys=True) + "\n").encode())
