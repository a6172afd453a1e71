"""What ``gradcam explain`` reads: image files, folders, glob patterns and manifests, listed lazily, and
which of them a resumed run still has to do.

A data set may hold millions of images, so inputs are never gathered into a list: ``Sources`` is an
iterable that walks folders (``os.scandir``, in the file system's order, one folder open at a time),
expands glob patterns (``glob.iglob``) and reads manifests line by line, yielding one ``InputItem`` at a
time. Each item carries an absolute ``path`` (so a run from another working folder knows it again) and a
``name``: the path relative to the folder or pattern root it was found under, without its suffix, which
names its output files (``sub/cat`` -> ``sub/cat_gradcam_overlay.png``; the names are
``gradcam.batch.layout``'s). Inputs are identified by their real path (``Sources.key``), so the same file
reached through a link, or from another working folder, is explained once.

Nothing blocks and nothing aborts the listing: a file is checked with ``os.stat`` before anything opens it,
so a FIFO, a device or a socket becomes an error item instead of a read that never returns, and a folder
that cannot be listed or an entry that cannot be examined (a symbolic-link loop) becomes an error item for
that entry while the rest is listed.

Manifests are a text file of paths (one a line; blank lines and lines starting with ``#`` are skipped) or,
for a ``.csv`` file, a table with a ``path`` column and an optional ``target`` column (a class index that
overrides ``--class-id`` for that image; empty means the default). They are UTF-8, with or without a
byte-order mark (as Excel saves a CSV); a line that is not UTF-8 becomes an error item naming its number.
Relative paths in a manifest are taken relative to the manifest's own folder, so a manifest can travel with
its data.
"""
from __future__ import annotations

import csv
import fnmatch
import functools
import glob
import os
import stat
import threading
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePath
from typing import IO

from gradcam.batch.errors import JobError
from gradcam.batch.layout import output_stem
from gradcam.batch.records import Recorded
from gradcam.images import IMAGE_SUFFIXES

FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


@dataclass(frozen=True)
class InputItem:
    """One input image.

    Attributes
    ----------
    path : the file, absolute, as given or as found (joined to its folder or manifest folder); links kept.
    name : the stem its output files are named by, relative to where it was found, ``/``-separated.
    target : the class to explain for this image (from a manifest), or None for the run's default.
    error : why the item cannot be explained before even reading it (a bad manifest line, not a regular
        file, a folder entry that cannot be examined), or None.
    """

    path: str
    name: str
    target: int | None = None
    error: str | None = None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def not_a_file(path: str, wanted: str = "an image file") -> str | None:
    """Why ``path`` cannot be ``wanted``, found with ``os.stat`` without opening it (opening a FIFO waits for a
    writer forever), or None: a regular file, or a missing one (the reader reports it missing)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as error:
        return f"{path}: cannot be examined ({error.strerror})"
    if stat.S_ISREG(mode):
        return None
    kind = next((name for is_kind, name in FILE_KINDS if is_kind(mode)), "not a regular file")
    return f"{path}: is {kind}, not {wanted}"


def _entry_item(root: str, entry: os.DirEntry) -> InputItem | None:
    """The item for a folder entry that is not a folder itself, or None when it is no image (by its suffix,
    or a link to a folder, which is not followed)."""
    name = output_stem(os.path.relpath(entry.path, root))
    try:
        if not is_image_name(entry.name) or entry.is_dir():
            return None
        # a regular file by the folder listing needs no further look; a link or a special file does
        error = None if entry.is_file(follow_symlinks=False) else not_a_file(entry.path)
    except OSError as failure:  # a link loop, or an entry that vanished or cannot be examined
        error = f"{entry.path}: cannot be examined ({failure.strerror})"
    return InputItem(entry.path, name, error=error)


def walk_images(root: str, folder: str | None = None) -> Iterator[InputItem]:
    """Image files under ``root``, recursively, lazily, named relative to ``root``; symbolic links to folders
    are not followed (no cycles). A folder that cannot be listed, or an entry that cannot be examined, becomes
    an error item, not a silent gap or the end of the run."""
    folder = folder or root
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                try:
                    is_folder = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_folder = False  # examined again, and reported, as a file
                if is_folder:
                    yield from walk_images(root, entry.path)
                elif (item := _entry_item(root, entry)) is not None:
                    yield item
    except OSError as error:
        reason = f"{folder}: cannot list the folder ({error.strerror})"
        yield InputItem(folder, output_stem(os.path.relpath(folder, root)), error=reason)


def glob_root(pattern: str) -> str:
    """The leading folders of ``pattern`` that hold no wildcard: names of matches are taken relative to it."""
    parts = PurePath(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if glob.has_magic(part):
            break
        fixed.append(part)
    return os.path.join(*fixed) if fixed else ""


def parse_target(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"target {text!r} is not a class index") from None


def decode_line(raw: bytes, number: int) -> str:
    """One manifest line as text: UTF-8, with a byte-order mark allowed on the first line.

    Raises
    ------
    ValueError
        Naming the first byte that is not UTF-8 and its column.
    """
    try:
        return raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(
            f"is not UTF-8 text (byte 0x{raw[error.start]:02x} at column {error.start + 1}); save the manifest "
            "as UTF-8"
        ) from None


class Manifest:
    """The images listed in a manifest file (see the module docstring); the header is checked on creation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(os.path.abspath(path))
        self.is_table = self.path.suffix.lower() == ".csv"
        problem = not_a_file(str(self.path), "a text or CSV file")
        if problem is not None or not self.path.exists():
            raise JobError(f"--manifest {problem or f'{self.path}: no such file'}")
        if self.is_table:
            with self.path.open("rb") as file:
                first = file.readline()
            try:
                header = next(csv.reader([decode_line(first, 1)]), [])
            except ValueError as error:
                raise JobError(f"--manifest {self.path} line 1 {error}") from None
            if "path" not in header:
                raise JobError(
                    f"--manifest {self.path}: a CSV manifest needs a 'path' column; its header is {header}"
                )

    def __iter__(self) -> Iterator[InputItem]:
        base = self.path.parent
        with self.path.open("rb") as file:
            if self.is_table:
                yield from self._table(base, file)
                return
            for number, raw in enumerate(file, start=1):
                try:
                    text = decode_line(raw, number).strip()
                except ValueError as error:
                    yield self._bad_line(number, str(error))
                    continue
                if text and not text.startswith("#"):
                    yield self._item(base, text, "", number)

    def _table(self, base: Path, file: IO[bytes]) -> Iterator[InputItem]:
        """The rows of a CSV manifest; a line that is not UTF-8 becomes an error item in its place (the CSV
        reader sees it as a blank line, which it skips)."""
        bad: list[InputItem] = []

        def lines() -> Iterator[str]:
            for number, raw in enumerate(file, start=1):
                try:
                    yield decode_line(raw, number)
                except ValueError as error:
                    bad.append(self._bad_line(number, str(error)))
                    yield "\n"

        rows = csv.DictReader(lines())
        for row in rows:
            yield from bad
            bad.clear()
            listed, target = (row.get("path") or "").strip(), (row.get("target") or "").strip()
            yield self._item(base, listed, target, rows.line_num)
        yield from bad

    def _bad_line(self, line: int, problem: str) -> InputItem:
        return InputItem(path=f"{self.path}:{line}", name=f"line-{line}", error=f"{self.path} line {line} {problem}")

    def _item(self, base: Path, listed: str, target: str, line: int) -> InputItem:
        if not listed:
            return self._bad_line(line, "has no path")
        path = os.path.normpath(os.path.join(base, listed))
        name = output_stem(os.path.basename(listed) if os.path.isabs(listed) else listed)
        error = not_a_file(path)
        if not target or error is not None:
            return InputItem(path, name, error=error)
        try:
            return InputItem(path, name, parse_target(target))
        except ValueError as failure:
            return InputItem(path, name, error=f"{self.path} line {line}: {failure}")


class Sources:
    """Every input of a run, in order: the arguments (files, folders, globs), then the manifest's entries.

    An argument that names an existing folder is searched recursively for files with an image suffix
    (``gradcam.images.IMAGE_SUFFIXES``); one that exists otherwise is a file, taken whatever its suffix;
    one that does not exist but holds a wildcard (``*``, ``?``, ``[``) is a glob pattern (``**`` spans
    folders); any other is a missing file, reported as an error for that image. Relative arguments are
    made absolute when the sources are created.
    """

    def __init__(self, arguments: Iterable[str | os.PathLike], manifest: Path | None = None) -> None:
        # the real paths of the arguments, to tell whether an output would land on (or among) them
        self.files: list[str] = []
        self.folders: list[str] = []
        self.patterns: list[str] = []
        self.order: list[tuple[str, str]] = []
        # real paths of folders, cached: resolving each input's folder once per folder, not once per input
        self._real_folder = functools.lru_cache(maxsize=4096)(os.path.realpath)
        for argument in map(os.path.abspath, map(os.fspath, arguments)):
            if os.path.isdir(argument):
                kind = "folder"
                self.folders.append(os.path.realpath(argument))
            elif not os.path.lexists(argument) and glob.has_magic(argument):
                kind = "pattern"
                root = glob_root(argument)
                self.patterns.append(os.path.join(os.path.realpath(root), os.path.relpath(argument, root)))
            else:
                kind = "file"
                self.files.append(os.path.realpath(argument))
            self.order.append((kind, argument))
        self.manifest = Manifest(manifest) if manifest is not None else None
        self._file_set = set(self.files)

    def __iter__(self) -> Iterator[InputItem]:
        for kind, argument in self.order:
            if kind == "file":
                yield InputItem(argument, output_stem(os.path.basename(argument)), error=not_a_file(argument))
            elif kind == "folder":
                yield from walk_images(argument)
            else:
                root = glob_root(argument)
                for path in glob.iglob(argument, recursive=True):
                    if not os.path.isdir(path):
                        yield InputItem(path, output_stem(os.path.relpath(path, root)), error=not_a_file(path))
        if self.manifest is not None:
            yield from self.manifest

    def key(self, path: str) -> str:
        """The identity of the input at ``path``: its real path (links resolved), whatever the working folder.

        Resolves the folder once (cached) and the file itself only when it is a link, so a long listing
        costs one ``lstat`` per input.
        """
        folder, name = os.path.split(os.path.abspath(path))
        full = os.path.join(self._real_folder(folder), name)
        return os.path.realpath(full) if os.path.islink(full) else full

    def check_output_folder(self, folder: Path, pictures: bool) -> None:
        """Refuse (``JobError``) an output folder that is, or lies in, an input folder when pictures are written
        (the next run would read them as inputs), before anything is written; compared by real paths."""
        if not pictures:
            return
        real = os.path.realpath(folder)
        for root in self.folders:
            if real == root or real.startswith(root + os.sep):
                raise JobError(
                    f"--output-dir {folder} is inside the input folder {root}: its pictures would overwrite an input "
                    "image, or be read as one by the next run; choose another --output-dir (or --no-save-maps)"
                )

    def would_read(self, path: str | os.PathLike) -> bool:
        """Whether a file written at ``path`` would be (or is) one of this run's inputs, from an argument.

        Compared by real paths (``os.path.realpath``), so a link to an input folder is the input folder. Used
        to refuse output files that would overwrite an input or be read as inputs by the next run. Manifest
        entries are not known in advance (that would need the whole manifest in memory): what protects them is
        that no run overwrites a file no run into the folder wrote (``pending_items``).
        """
        path = os.path.realpath(path)
        if path in self._file_set:
            return True
        if is_image_name(path) and any(path.startswith(folder + os.sep) for folder in self.folders):
            return True
        return any(fnmatch.fnmatch(path, pattern) for pattern in self.patterns)


class StemRegistry:
    """Unique output stems: ``cat``, then ``cat-2``, ``cat-3`` for other images named alike.

    Seeded with the stems earlier runs into the folder used, so a resumed run never overwrites their files.
    """

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken

    def claim(self, name: str) -> str:
        stem, count = name, 1
        while stem in self.taken:
            count += 1
            stem = f"{name}-{count}"
        self.taken.add(stem)
        return stem


def check_output(output: Path, sources: Sources, replaceable: Collection[Path]) -> None:
    """Refuse (``JobError``) to write ``output`` over an input, where the next run would read it as one, or
    over any file already there that is not in ``replaceable`` (the pictures a killed run wrote without
    records). Since no run overwrites a file it did not write, no input is ever overwritten, whatever lists
    it (an argument, a folder, a pattern, a manifest, a link into the output folder)."""
    if sources.would_read(output):
        raise JobError(
            f"the output {output} would overwrite an input image, or be read as one by the next run; "
            "choose another --output-dir"
        )
    if os.path.lexists(output) and output not in replaceable:
        raise JobError(
            f"the output {output} is already there and no run into this folder wrote it (an input image, or "
            "another program's file); it would be overwritten: move it, or choose another --output-dir"
        )


def pending_items(
    sources: Sources,
    recorded: Recorded,
    output_files: Callable[[str], Iterable[Path]] | None = None,
    replaceable: Collection[Path] = frozenset(),
) -> Iterator[InputItem]:
    """The inputs of ``sources`` not yet in ``recorded``, each once (compared by ``Sources.key``).

    With ``output_files`` (stem -> the files an image of that stem may get), each item not already known to
    fail is renamed to a unique stem (``StemRegistry``) and its files are checked (``check_output``) before it
    is handed on, so before anything is written for it.
    """
    stems = StemRegistry(recorded.stems) if output_files is not None else None
    seen: set[str] = set()
    for item in sources:
        key = sources.key(item.path)
        if key in recorded.paths or key in seen:
            continue
        seen.add(key)
        if stems is not None and item.error is None:  # an item already known to fail gets no pictures
            item = replace(item, name=stems.claim(item.name))
            for output in output_files(item.name):
                check_output(output, sources, replaceable)
        yield item


def count_pending(sources: Sources, recorded: Recorded, stop: threading.Event) -> int | None:
    """How many inputs of ``sources`` are not in ``recorded`` (None when ``stop`` is set before the end)."""
    count = 0
    for item in sources:
        if stop.is_set():
            return None
        count += sources.key(item.path) not in recorded.paths
    return count


def batched(items: Iterable[InputItem], size: int) -> Iterator[list[InputItem]]:
    """``items`` in lists of ``size`` (the last one shorter)."""
    batch: list[InputItem] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
