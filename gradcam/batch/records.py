"""What a run writes: one JSON line per image in ``records.jsonl``, heat-map files, and ``summary.json``.

The records file is the run's memory. It is only ever appended to, one batch per ``write`` followed by a
flush, and every image's files are written before its record, so a run killed at any moment (SIGKILL
included) leaves complete records whose files exist, plus at most one partial last line. The next run
cuts that partial line off before it appends, and skips every image that has a record: each image ends
up recorded exactly once. (Flushing hands the lines to the operating system, which keeps them if the
process dies; it is not an ``fsync``, which a power cut would need.)

Heat maps go to PNG files (one per image and method, for small runs) or, for large runs, into ``.npz``
shards of many images each, written whole under a temporary name and renamed into place; the records of
a shard's images are written right after it, so a record never points to a shard that is not there.
Every file name comes from ``OutputLayout`` (``gradcam.batch.layout``).
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gradcam.batch.errors import JobError
from gradcam.batch.layout import OutputLayout, PictureKey, Record


def cut_partial_line(path: Path) -> int:
    """Truncate ``path`` just after its last newline, dropping a line cut off mid-write; returns bytes removed."""
    with path.open("rb+") as file:
        end = file.seek(0, os.SEEK_END)
        position, keep = end, 0
        while position > 0:
            step = min(1 << 16, position)
            position -= step
            file.seek(position)
            newline = file.read(step).rfind(b"\n")
            if newline >= 0:
                keep = position + newline + 1
                break
        if keep < end:
            file.truncate(keep)
        return end - keep


class RecordWriter:
    """Appends records to ``records.jsonl``, each batch with one ``write`` and a flush.

    A partial last line left by a killed run is cut off first, so new lines never continue a broken one.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = OutputLayout(output_dir).records
        if self.path.is_file():
            cut_partial_line(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        if records:
            self._file.write("".join(json.dumps(r, sort_keys=True) + "\n" for r in records))
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def iter_records(path: Path) -> Iterator[dict[str, Any]]:
    """The complete records in ``path``, one at a time; a last line cut off mid-write (no newline) is ignored."""
    if not path.is_file():
        return
    with path.open(encoding="utf-8") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith("\n"):
                return
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise JobError(
                    f"{path} line {number} is not a JSON record ({error.msg}); remove the line, "
                    "or start over with --overwrite"
                ) from None


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record in ``path`` (see ``iter_records``)."""
    return list(iter_records(path))


@dataclass
class Recorded:
    """What earlier runs into a folder recorded: the images a resumed run skips, and the PNG stems they took.

    Attributes
    ----------
    paths : absolute paths of the recorded images (error records included: they are not retried).
    stems : the output stems of their PNG files, so that a resumed run never gives another image one of them.
    """

    paths: set[str] = field(default_factory=set)
    stems: set[str] = field(default_factory=set)


def read_recorded(path: Path) -> Recorded:
    """The ``Recorded`` state of the records file ``path`` (empty when there is none)."""
    recorded = Recorded()
    for record in iter_records(path):
        recorded.paths.add(os.path.abspath(record["path"]))
        recorded.stems.update(OutputLayout.stem_of(name) for _, _, name in Record.pictures(record))
    return recorded


def write_summary(output_dir: Path, run: dict[str, Any]) -> Path:
    """``summary.json``: the run's settings, the counts, and every record of ``records.jsonl``.

    Written record by record (two passes over the records: counts, then the records), so memory stays flat
    however many images there are.
    """
    layout = OutputLayout(output_dir)
    source = layout.records
    images = errors = 0
    for record in iter_records(source):
        images += 1
        errors += Record.is_error(record)
    head = json.dumps({**run, "images": images, "errors": errors}, indent=2, sort_keys=True)
    path = layout.summary
    with path.open("w", encoding="utf-8") as file:
        file.write(head[: head.rfind("}")].rstrip() + ',\n  "records": [')
        for index, record in enumerate(iter_records(source)):
            file.write(("\n    " if index == 0 else ",\n    ") + json.dumps(record, sort_keys=True))
        file.write("\n  ]\n}\n" if images else "]\n}\n")
    return path


@dataclass
class BatchOutput:
    """What explaining one batch produced, before it is written.

    Attributes
    ----------
    records : one record per input image, in order (an error record ``{"path", "error"}`` where it failed).
    pictures : ``PictureKey`` (method, kind) -> per image, the PNG bytes of the file named in
        ``records[i]["files"]`` (``b""`` where there is none).
    maps : method -> ``(n, H, W)`` uint8 heat maps (``round(255 * map)``), for ``.npz`` shards; empty when
        the run writes no shards.
    """

    records: list[dict[str, Any]]
    pictures: dict[PictureKey, list[bytes]] = field(default_factory=dict)
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return sum(map(Record.is_error, self.records))


class MapShards:
    """Heat maps of many images in ``maps-NNNNN.npz`` files of ``size`` images each.

    A shard holds ``paths`` (the images, in order) and one ``(n, H, W)`` uint8 array per method, named by
    the method. Numbering continues after the shards already in the folder, so a resumed run adds shards.
    """

    def __init__(self, output_dir: Path, size: int) -> None:
        if size < 1:
            raise ValueError(f"shard size must be at least 1, got {size}")
        self.layout = OutputLayout(output_dir)
        self.size = size
        self.number = max(self.layout.shard_numbers(), default=-1) + 1
        self._paths: list[str] = []
        self._maps: dict[str, list[np.ndarray]] = {}

    @property
    def name(self) -> str:
        return OutputLayout.shard_name(self.number)

    def add(self, path: str, maps: dict[str, np.ndarray]) -> dict[str, Any]:
        """Queue one image's maps; returns where they will be: ``{"file": shard name, "index": row}``."""
        reference = {"file": self.name, "index": len(self._paths)}
        self._paths.append(path)
        for method, heat in maps.items():
            self._maps.setdefault(method, []).append(heat)
        return reference

    @property
    def full(self) -> bool:
        return len(self._paths) >= self.size

    def flush(self) -> None:
        """Write the queued maps as the next shard (whole, then renamed into place) and start a new one."""
        if not self._paths:
            return
        arrays = {method: np.stack(maps) for method, maps in self._maps.items()}
        final = self.layout.shard(self.number)
        partial = self.layout.partial(final)
        with partial.open("wb") as file:
            np.savez_compressed(file, paths=np.array(self._paths), **arrays)
        os.replace(partial, final)
        self.number += 1
        self._paths, self._maps = [], {}


class OutputSink:
    """Writes batch outputs: PNG files, then shards, then the records that name them (see the module docstring)."""

    def __init__(self, output_dir: Path, shard_size: int = 0) -> None:
        self.output_dir = output_dir
        self.records = RecordWriter(output_dir)
        self.shards = MapShards(output_dir, shard_size) if shard_size else None
        self._waiting: list[dict[str, Any]] = []  # records whose maps sit in the shard not yet written

    def write(self, output: BatchOutput) -> None:
        for i, record in enumerate(output.records):
            for method, kind, name in Record.pictures(record):
                target = self.output_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(output.pictures[PictureKey.of(method, kind)][i])
        if self.shards is None:
            self.records.write(output.records)
            return
        for i, record in enumerate(output.records):
            if not Record.is_error(record):
                record["maps"] = self.shards.add(record["path"], {m: heat[i] for m, heat in output.maps.items()})
            self._waiting.append(record)
            if self.shards.full:
                self._flush_shard()

    def _flush_shard(self) -> None:
        self.shards.flush()
        self.records.write(self._waiting)
        self._waiting = []

    def close(self) -> None:
        try:
            if self.shards is not None:
                self._flush_shard()
        finally:
            self.records.close()


def remove_outputs(output_dir: Path) -> None:
    """Delete what a previous run wrote that would otherwise be resumed: records, summary and map shards."""
    for path in OutputLayout(output_dir).resume_files():
        path.unlink()
