"""Every name a batch job writes, owned here: the files (``OutputLayout``) and the fields of a record (``Record``).
Following ``--output-dir`` through a run leads here only.

An output folder holds::

    records.jsonl                     one JSON line per image: the run's memory, which a resumed run skips
    settings.json                     the run's settings, written when it starts: a resumed run must match them
    summary.json                      the run's settings, its counts and every record
    gradcam.lock                      locked (``flock``) while a run writes into the folder: one run at a time
    pictures.pending                  names of pictures written whose records are not yet: a killed run's
                                      pictures, which the resumed run may write again
    <stem>_<slug>_<kind>.png          per image and method: heatmap, overlay, and guided for pixel-space methods
    maps-NNNNN.npz                    heat maps of many images each (``--npz-shards``), written whole as
                                      ``maps-NNNNN.npz.partial`` and then renamed

The stem is the input's path relative to where it was found, without its suffix (``sub/cat.png`` -> ``sub/cat``),
so the pictures mirror the input folders; the slug is the method's name as a file name (``gradcam++`` ->
``gradcampp``). Slugs and kinds hold no ``_``, so a picture's name gives its stem back, which a resumed run needs:
it must never give another image a stem that earlier runs used.
"""
from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar


class PictureKey(str):
    """Which picture of a batch's output: a method and a kind, spelled ``method/kind`` (``gradcam++/overlay``).

    A string, so that it names a column of a Ray batch as it is and equals the plain string it is made from.
    """

    __slots__ = ()

    @classmethod
    def of(cls, method: str, kind: str) -> PictureKey:
        return cls(f"{method}/{kind}")


@dataclass(frozen=True)
class OutputLayout:
    """The names of everything a job writes into ``folder`` (see the module docstring).

    The class-level names are the same in every folder (a record stores its pictures' names relative to the
    folder); the properties and methods give paths in ``folder``.
    """

    folder: Path

    RECORDS: ClassVar[str] = "records.jsonl"
    SUMMARY: ClassVar[str] = "summary.json"
    SETTINGS: ClassVar[str] = "settings.json"
    LOCK: ClassVar[str] = "gradcam.lock"
    PENDING: ClassVar[str] = "pictures.pending"
    KINDS: ClassVar[tuple[str, ...]] = ("heatmap", "overlay", "guided")
    SHARD: ClassVar[re.Pattern[str]] = re.compile(r"maps-(\d{5,})\.npz")
    PARTIAL: ClassVar[str] = ".partial"

    @staticmethod
    def stem(relative: str) -> str:
        """The stem an input's outputs are named by: ``relative`` without its suffix, ``/``-separated, and with
        no ``..`` (a manifest entry ``../x.png`` must not name files outside the output folder)."""
        parts = os.path.splitext(os.path.normpath(relative))[0].replace(os.sep, "/").split("/")
        return "/".join(part for part in parts if part not in ("", ".", "..")) or "image"

    @staticmethod
    def slug(method: str) -> str:
        """A method name as it appears in file names (``gradcam++`` -> ``gradcampp``)."""
        return method.replace("+", "p")

    @classmethod
    def kinds(cls, pixel_space: bool) -> tuple[str, ...]:
        """The pictures a method's explanation gets: the guided picture only for pixel-space methods."""
        return cls.KINDS if pixel_space else cls.KINDS[:2]

    @classmethod
    def picture_name(cls, stem: str, method: str, kind: str) -> str:
        """The file name, relative to the folder, of one picture of the image named ``stem``."""
        return f"{stem}_{cls.slug(method)}_{kind}.png"

    @staticmethod
    def stem_of(picture_name: str) -> str:
        """The stem a picture's file name was made from (the inverse of ``picture_name``)."""
        return picture_name.rsplit("_", 2)[0]

    @staticmethod
    def shard_name(number: int) -> str:
        return f"maps-{number:05d}.npz"

    @property
    def records(self) -> Path:
        return self.folder / self.RECORDS

    @property
    def summary(self) -> Path:
        return self.folder / self.SUMMARY

    @property
    def settings(self) -> Path:
        return self.folder / self.SETTINGS

    @property
    def lock(self) -> Path:
        return self.folder / self.LOCK

    @property
    def pending(self) -> Path:
        return self.folder / self.PENDING

    def picture_files(self, stem: str, methods: tuple[str, ...]) -> list[Path]:
        """Every picture an image of ``stem`` may get from ``methods`` (guided pictures included, which only
        pixel-space methods write)."""
        return [self.folder / self.picture_name(stem, method, kind) for method in methods for kind in self.KINDS]

    def shard_numbers(self) -> list[int]:
        """The numbers of the map shards already in the folder."""
        return [int(match.group(1)) for match in map(self.SHARD.fullmatch, os.listdir(self.folder)) if match]

    def shard(self, number: int) -> Path:
        return self.folder / self.shard_name(number)

    @classmethod
    def partial(cls, path: Path) -> Path:
        """Where ``path`` is written before it is renamed into place, so that it never exists half-written."""
        return path.with_name(path.name + cls.PARTIAL)

    def resume_files(self) -> list[Path]:
        """What earlier runs left that a new run would resume from: records, settings, summary, the list of
        pictures without records, map shards and files left half-written."""
        names = os.listdir(self.folder)
        own = (self.RECORDS, self.SETTINGS, self.SUMMARY, self.PENDING)
        return [
            self.folder / name
            for name in names
            if name in own or self.SHARD.fullmatch(name) or name.endswith(self.PARTIAL)
        ]

    def inside(self, name: str) -> Path | None:
        """``folder / name`` for a file name read from the folder's own files (a record, the list of pending
        pictures), or None when the name would lead out of the folder (absolute, or with ``..``)."""
        if not name or os.path.isabs(name) or ".." in name.split("/"):
            return None
        return self.folder / name


# The stem rule under the name the input side uses: inputs are named before any output folder is chosen.
output_stem = OutputLayout.stem


class Record:
    """The schema of one line of ``records.jsonl``, the only place its fields are named.

    An explained image::

        path          the input as listed (manifest entries and folder contents resolved from where they were found)
        target        the explained class (-1 for a target function), class_name, score (raw), probability (softmax)
        layer         the layer the maps were read at
        boxes         method -> the 15% box (x0, y0, x1, y1), or None for pixel-space methods
        warnings      what is degenerate about the image's maps, one message each (``Explanation.warnings``):
                      an all-zero or flat map and why, a guided rule that met no ReLU, a probability explained
        top_channels  {method, most, least}: the channels of largest and smallest weight, where a method has weights
        files         method -> kind -> picture file name (relative to the output folder), when pictures are saved
        maps          {shard, index}: where the image's heat maps lie, when shards are written

    An image that could not be explained: ``{"path", "error"}``; a resumed run does not retry it.

    ``path`` is absolute (the input as found, symbolic links kept), so a run from another working folder
    still knows the image; a resumed run compares inputs by their real paths (``os.path.realpath``).
    """

    @staticmethod
    def error(path: str, message: str | None) -> dict[str, Any]:
        """The record of an input that failed (``message`` None: a placeholder the explained record replaces)."""
        return {"path": path, "error": message}

    @staticmethod
    def explained(
        path: str,
        target: int,
        class_name: str | None,
        score: float,
        probability: float | None,
        layer: str | None,
        boxes: dict[str, list[int] | None],
        warnings: list[str],
    ) -> dict[str, Any]:
        """The record of an explained image (pictures, channels and shard places are added as they are made)."""
        return {
            "path": path,
            "target": target,
            "class_name": class_name,
            "score": score,
            "probability": probability,
            "layer": layer,
            "boxes": boxes,
            "warnings": warnings,
        }

    @staticmethod
    def is_error(record: dict[str, Any]) -> bool:
        return "error" in record

    @staticmethod
    def problem(record: Any) -> str | None:
        """Why a JSON value read from ``records.jsonl`` is not a record a resumed run can use, or None."""
        if not isinstance(record, dict) or not isinstance(record.get("path"), str):
            return "is not a record (a JSON object with a 'path' string)"
        files = record.get("files") or {}
        if not isinstance(files, dict) or not all(
            isinstance(kinds, dict) and all(isinstance(name, str) for name in kinds.values())
            for kinds in files.values()
        ):
            return "has 'files' that are not {method: {kind: file name}}"
        return None

    @staticmethod
    def pictures(record: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
        """``(method, kind, file name)`` of each picture the record names."""
        for method, kinds in (record.get("files") or {}).items():
            for kind, name in kinds.items():
                yield method, kind, name
