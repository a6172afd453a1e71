"""What a run writes: one JSON line per image in ``records.jsonl``, heat-map files, and ``summary.json``.

The records file is the run's memory. It is only ever appended to, one batch per ``write`` followed by a
flush, and every image's files are written before its record, so a run killed at any moment (SIGKILL
included) leaves complete records whose files exist, plus at most one partial last line. The next run
cuts that partial line off before it appends, and skips every image that has a record: each image ends
up recorded exactly once. (Flushing hands the lines to the operating system, which keeps them if the
process dies; it is not an ``fsync``, which a power cut would need.)

Every other file is written whole under a temporary name and renamed into place (``os.replace``), so it is
either the old file or the new one, never half of one: the PNG pictures, the ``.npz`` shards of many images'
heat maps, ``settings.json`` and ``summary.json``. Before a batch's pictures are written their names are
appended to ``pictures.pending`` (emptied once their records are written), so a resumed run knows which
picture files without a record a killed run wrote, and may write them again; any other file in the way is
never overwritten (``gradcam.batch.sources.pending_items``). The records of a shard's images are written
right after it, so a record never points to a shard that is not there. Every file name comes from
``OutputLayout`` (``gradcam.batch.layout``).
"""
from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from gradcam.batch.errors import JobError
from gradcam.batch.layout import OutputLayout, PictureKey, Record


@contextmanager
def written_whole(path: Path) -> Iterator[IO[bytes]]:
    """A binary file that becomes ``path`` only once it is complete: written as ``path.partial`` and renamed.

    A run killed while writing leaves ``path`` as it was; the rename also replaces a link at ``path`` instead
    of writing through it.
    """
    partial = OutputLayout.partial(path)
    partial.unlink(missing_ok=True)  # a partial file a killed run left (or a link someone put there)
    try:
        with partial.open("xb") as file:
            yield file
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


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


def check_regular(path: Path) -> bool:
    """Whether ``path`` exists; a ``JobError`` when it exists but is not a regular file (a folder, a link, a
    FIFO): the run would append to, or read from, something that is not its own file."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    except OSError as error:
        raise JobError(f"{path}: cannot be read ({error.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a link" if stat.S_ISLNK(mode) else "not a regular file"
        raise JobError(f"{path} is {kind}, not the file a run writes; move it, or choose another --output-dir")
    return True


def strict_json(value: Any) -> str:
    """``value`` as strict JSON: NaN and infinity are refused (``ValueError``), since strict parsers reject them."""
    return json.dumps(value, sort_keys=True, allow_nan=False)


def record_line(record: dict[str, Any]) -> str:
    """One line of ``records.jsonl``. A record holding a non-finite number (which the explainer should have
    turned into an error record) becomes an error record here, the last safety net: every line is strict JSON."""
    try:
        return strict_json(record) + "\n"
    except ValueError:
        message = f"{record['path']}: the explanation holds a non-finite number (NaN or infinity)"
        return strict_json(Record.error(record["path"], message)) + "\n"


class RecordWriter:
    """Appends records to ``records.jsonl``, each batch with one ``write`` and a flush.

    A partial last line left by a killed run is cut off first, so new lines never continue a broken one.
    """

    def __init__(self, output_dir: Path) -> None:
        self.path = OutputLayout(output_dir).records
        if check_regular(self.path):
            cut_partial_line(self.path)
        self._file = self.path.open("a", encoding="utf-8")

    def write(self, records: list[dict[str, Any]]) -> None:
        if records:
            self._file.write("".join(map(record_line, records)))
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def iter_records(path: Path, strict: bool = True) -> Iterator[dict[str, Any]]:
    """The complete records in ``path``, one at a time; a last line cut off mid-write (no newline) is ignored.

    Raises
    ------
    JobError
        When ``path`` is not a regular file, or (``strict``, else the line is skipped) a complete line is not
        UTF-8, not JSON, or not a record: one line naming the line number (a resumed run must not guess which
        images are done).
    """
    if not check_regular(path):
        return
    with path.open("rb") as file:
        for number, line in enumerate(file, start=1):
            if not line.endswith(b"\n"):
                return
            try:
                record = json.loads(line.decode("utf-8"))
                problem = Record.problem(record)
            except UnicodeDecodeError as error:
                problem = f"is not UTF-8 text (byte 0x{line[error.start]:02x} at column {error.start + 1})"
            except json.JSONDecodeError as error:
                problem = f"is not a JSON record ({error.msg})"
            if problem is None:
                yield record
            elif strict:
                raise JobError(f"{path} line {number} {problem}; remove the line, or start over with --overwrite")


def read_records(path: Path) -> list[dict[str, Any]]:
    """Every complete record in ``path`` (see ``iter_records``)."""
    return list(iter_records(path))


@dataclass
class Recorded:
    """What earlier runs into a folder recorded: the images a resumed run skips, and the PNG stems they took.

    Attributes
    ----------
    paths : real paths of the recorded images (error records included: they are not retried).
    stems : the output stems of their PNG files, so that a resumed run never gives another image one of them.
    """

    paths: set[str] = field(default_factory=set)
    stems: set[str] = field(default_factory=set)


def read_recorded(path: Path, key: Callable[[str], str] = os.path.abspath) -> Recorded:
    """The ``Recorded`` state of the records file ``path`` (empty when there is none); ``key`` turns a recorded
    path into the identity inputs are compared by (``Sources.key``: the real path)."""
    recorded = Recorded()
    for record in iter_records(path):
        recorded.paths.add(key(record["path"]))
        recorded.stems.update(OutputLayout.stem_of(name) for _, _, name in Record.pictures(record))
    return recorded


def write_summary(output_dir: Path, run: dict[str, Any]) -> Path:
    """``summary.json``: the run's settings, the counts, and every record of ``records.jsonl``.

    Written record by record (two passes over the records: counts, then the records), so memory stays flat
    however many images there are, into a temporary file renamed into place when complete.
    """
    layout = OutputLayout(output_dir)
    source = layout.records
    images = errors = 0
    for record in iter_records(source):
        images += 1
        errors += Record.is_error(record)
    head = json.dumps({**run, "images": images, "errors": errors}, indent=2, sort_keys=True, allow_nan=False)
    with written_whole(layout.summary) as file:
        file.write((head[: head.rfind("}")].rstrip() + ',\n  "records": [').encode())
        for index, record in enumerate(iter_records(source)):
            file.write((("\n    " if index == 0 else ",\n    ") + strict_json(record)).encode())
        file.write(b"\n  ]\n}\n" if images else b"]\n}\n")
    return layout.summary


class PendingPictures:
    """``pictures.pending``: the names of pictures written whose records are not written yet.

    Appended (and flushed) before a batch's pictures are written, emptied once their records are. What it
    holds when a run starts are the pictures a killed run wrote without records: the resumed run gives the
    same images the same names and may write those files again.
    """

    def __init__(self, output_dir: Path) -> None:
        self.layout = OutputLayout(output_dir)
        self.path = self.layout.pending
        self._file: IO[str] | None = None

    def names(self) -> set[str]:
        """The names listed (a last line cut off mid-write, or one that is not a JSON string, is ignored)."""
        if not check_regular(self.path):
            return set()
        names = set()
        with self.path.open("rb") as file:
            for line in file:
                try:
                    name = json.loads(line.decode("utf-8")) if line.endswith(b"\n") else None
                except (UnicodeDecodeError, json.JSONDecodeError):
                    name = None
                if isinstance(name, str) and self.layout.inside(name):
                    names.add(name)
        return names

    def add(self, names: Iterable[str]) -> None:
        """List ``names`` (one JSON string a line: any file name, newlines and undecodable bytes included)."""
        if self._file is None:
            check_regular(self.path)
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write("".join(json.dumps(name) + "\n" for name in names))
        self._file.flush()

    def clear(self) -> None:
        if self._file is not None:
            self._file.truncate(0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


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
        with written_whole(self.layout.shard(self.number)) as file:
            np.savez_compressed(file, paths=np.array(self._paths), **arrays)
        self.number += 1
        self._paths, self._maps = [], {}


class OutputSink:
    """Writes batch outputs: PNG files, then shards, then the records that name them (see the module docstring)."""

    def __init__(self, output_dir: Path, shard_size: int = 0) -> None:
        self.output_dir = output_dir
        self.records = RecordWriter(output_dir)
        self.pending = PendingPictures(output_dir)
        self.shards = MapShards(output_dir, shard_size) if shard_size else None
        self._waiting: list[dict[str, Any]] = []  # records whose maps sit in the shard not yet written

    def write(self, output: BatchOutput) -> None:
        pictures = [(i, PictureKey.of(method, kind), name) for i, record in enumerate(output.records)
                    for method, kind, name in Record.pictures(record)]
        if pictures:
            self.pending.add(name for _, _, name in pictures)
        for i, key, name in pictures:
            target = self.output_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            with written_whole(target) as file:
                file.write(output.pictures[key][i])
        if self.shards is None:
            self._write_records(output.records)
            return
        for i, record in enumerate(output.records):
            if not Record.is_error(record):
                record["maps"] = self.shards.add(record["path"], {m: heat[i] for m, heat in output.maps.items()})
            self._waiting.append(record)
            if self.shards.full:
                self._flush_shard()

    def _write_records(self, records: list[dict[str, Any]]) -> None:
        self.records.write(records)
        self.pending.clear()

    def _flush_shard(self) -> None:
        self.shards.flush()
        self._write_records(self._waiting)
        self._waiting = []

    def close(self) -> None:
        try:
            if self.shards is not None:
                self._flush_shard()
        finally:
            self.records.close()
            self.pending.close()


def earlier_pictures(output_dir: Path) -> Iterator[Path]:
    """The picture files earlier runs into ``output_dir`` wrote: those its records name and those
    ``pictures.pending`` lists (names that would lead out of the folder are left out)."""
    layout = OutputLayout(output_dir)
    names = PendingPictures(output_dir).names()
    records = iter_records(layout.records, strict=False)  # starting over: a broken line names no picture
    names.update(name for record in records for _, _, name in Record.pictures(record))
    for name in sorted(names):
        path = layout.inside(name)
        if path is not None:
            yield path


def remove_outputs(output_dir: Path, keep: Callable[[Path], bool] | None = None) -> None:
    """Delete what earlier runs wrote into ``output_dir`` (``--overwrite``): their pictures, except those ``keep``
    says to keep (the new run's inputs), then records, settings, summary, shards and half-written files.

    A picture is deleted only where it is a regular file reached without a link (a link, or a folder linked
    from elsewhere, was not made by a run: it stays, and so does what it points to).
    """
    real_folder = os.path.realpath(output_dir)
    for path in earlier_pictures(output_dir):
        own = os.path.realpath(path) == os.path.join(real_folder, path.relative_to(output_dir))
        if own and path.is_file() and not (keep is not None and keep(path)):
            path.unlink()
    for path in OutputLayout(output_dir).resume_files():
        if not path.is_dir():
            path.unlink()
