"""What ``gradcam explain`` reads: image files, folders, glob patterns and manifests, listed lazily, and
which of them a resumed run still has to do.

A data set may hold millions of images, so inputs are never gathered into a list: ``Sources`` is an
iterable that walks folders (``os.scandir``, in the file system's order, one folder open at a time),
expands glob patterns (``glob.iglob``) and reads manifests line by line, yielding one ``InputItem`` at a
time. Each item carries a ``name``: the path relative to the folder or pattern root it was found under,
without its suffix, which names its output files (``sub/cat`` -> ``sub/cat_gradcam_overlay.png``; the names are
``gradcam.batch.layout``'s).

Manifests are a text file of paths (one a line; blank lines and lines starting with ``#`` are skipped) or,
for a ``.csv`` file, a table with a ``path`` column and an optional ``target`` column (a class index that
overrides ``--class-id`` for that image; empty means the default). Relative paths in a manifest are taken
relative to the manifest's own folder, so a manifest can travel with its data.
"""
from __future__ import annotations

import csv
import fnmatch
import glob
import os
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path, PurePath

from gradcam.batch.errors import JobError
from gradcam.batch.layout import output_stem
from gradcam.batch.records import Recorded
from gradcam.images import IMAGE_SUFFIXES


@dataclass(frozen=True)
class InputItem:
    """One input image.

    Attributes
    ----------
    path : the file, as given or as found (joined to its folder or manifest folder).
    name : the stem its output files are named by, relative to where it was found, ``/``-separated.
    target : the class to explain for this image (from a manifest), or None for the run's default.
    error : why the item cannot be explained before even reading it (a bad manifest line), or None.
    """

    path: str
    name: str
    target: int | None = None
    error: str | None = None


def is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def walk_images(root: str, folder: str | None = None) -> Iterator[InputItem]:
    """Image files under ``root``, recursively, lazily, named relative to ``root``; symbolic links to folders
    are not followed (no cycles). A folder that cannot be listed becomes an error item, not a silent gap."""
    folder = folder or root
    try:
        entries = os.scandir(folder)
    except OSError as error:
        reason = f"{folder}: cannot list the folder ({error.strerror})"
        yield InputItem(folder, output_stem(os.path.relpath(folder, root)), error=reason)
        return
    with entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                yield from walk_images(root, entry.path)
            elif is_image_name(entry.name) and entry.is_file():
                yield InputItem(entry.path, output_stem(os.path.relpath(entry.path, root)))


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


class Manifest:
    """The images listed in a manifest file (see the module docstring); the header is checked on creation."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.is_table = self.path.suffix.lower() == ".csv"
        if not self.path.is_file():
            raise JobError(f"--manifest {self.path}: no such file")
        if self.is_table:
            with self.path.open(newline="", encoding="utf-8") as file:
                header = next(csv.reader(file), [])
            if "path" not in header:
                raise JobError(
                    f"--manifest {self.path}: a CSV manifest needs a 'path' column; its header is {header}"
                )

    def __iter__(self) -> Iterator[InputItem]:
        base = self.path.parent
        with self.path.open(newline="", encoding="utf-8") as file:
            if self.is_table:
                rows = csv.DictReader(file)
                for row in rows:
                    listed, target = (row.get("path") or "").strip(), (row.get("target") or "").strip()
                    yield self._item(base, listed, target, rows.line_num)
            else:
                for line, text in enumerate(file, start=1):
                    text = text.strip()
                    if text and not text.startswith("#"):
                        yield self._item(base, text, "", line)

    def _item(self, base: Path, listed: str, target: str, line: int) -> InputItem:
        if not listed:
            return InputItem(path=f"{self.path}:{line}", name=f"line-{line}", error=f"{self.path} line {line}: no path")
        path = os.path.normpath(os.path.join(base, listed))
        name = output_stem(os.path.basename(listed) if os.path.isabs(listed) else listed)
        if not target:
            return InputItem(path, name)
        try:
            return InputItem(path, name, parse_target(target))
        except ValueError as error:
            return InputItem(path, name, error=f"{self.path} line {line}: {error}")


class Sources:
    """Every input of a run, in order: the arguments (files, folders, globs), then the manifest's entries.

    An argument that names an existing folder is searched recursively for files with an image suffix
    (``gradcam.images.IMAGE_SUFFIXES``); one that exists otherwise is a file, taken whatever its suffix;
    one that does not exist but holds a wildcard (``*``, ``?``, ``[``) is a glob pattern (``**`` spans
    folders); any other is a missing file, reported as an error for that image.
    """

    def __init__(self, arguments: Iterable[str | os.PathLike], manifest: Path | None = None) -> None:
        self.files: list[str] = []
        self.folders: list[str] = []
        self.patterns: list[str] = []
        self.order: list[tuple[str, str]] = []
        for argument in map(os.fspath, arguments):
            if os.path.isdir(argument):
                kind = "folder"
                self.folders.append(os.path.abspath(argument))
            elif not os.path.exists(argument) and glob.has_magic(argument):
                kind = "pattern"
                self.patterns.append(os.path.abspath(argument))
            else:
                kind = "file"
                self.files.append(os.path.abspath(argument))
            self.order.append((kind, argument))
        self.manifest = Manifest(manifest) if manifest is not None else None
        self._file_set = set(self.files)

    def __iter__(self) -> Iterator[InputItem]:
        for kind, argument in self.order:
            if kind == "file":
                yield InputItem(argument, output_stem(os.path.basename(argument)))
            elif kind == "folder":
                yield from walk_images(argument)
            else:
                root = glob_root(argument)
                for path in glob.iglob(argument, recursive=True):
                    if os.path.isfile(path):
                        yield InputItem(path, output_stem(os.path.relpath(path, root or os.curdir)))
        if self.manifest is not None:
            yield from self.manifest

    def would_read(self, path: str | os.PathLike) -> bool:
        """Whether a file written at ``path`` would be (or is) one of this run's inputs, from an argument.

        Used to refuse output files that would overwrite an input or be read as inputs by the next run.
        Manifest entries are not checked: that would need the whole manifest in memory.
        """
        path = os.path.abspath(path)
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


def pending_items(
    sources: Sources, recorded: Recorded, output_files: Callable[[str], Iterable[Path]] | None = None
) -> Iterator[InputItem]:
    """The inputs of ``sources`` not yet in ``recorded``, each once.

    With ``output_files`` (stem -> the files an image of that stem may get), each item is renamed to a
    unique stem (``StemRegistry``) and a file that would overwrite an input, or be read as one by the next
    run, is refused with a ``JobError``.
    """
    stems = StemRegistry(recorded.stems) if output_files is not None else None
    seen: set[str] = set()
    for item in sources:
        key = os.path.abspath(item.path)
        if key in recorded.paths or key in seen:
            continue
        seen.add(key)
        if stems is not None:
            item = replace(item, name=stems.claim(item.name))
            for output in output_files(item.name):
                if sources.would_read(output):
                    raise JobError(
                        f"the output {output} would overwrite an input image, or be read as one by the next run; "
                        "choose another --output-dir"
                    )
        yield item


def count_pending(sources: Sources, recorded: Recorded, stop: threading.Event) -> int | None:
    """How many inputs of ``sources`` are not in ``recorded`` (None when ``stop`` is set before the end)."""
    count = 0
    for item in sources:
        if stop.is_set():
            return None
        count += os.path.abspath(item.path) not in recorded.paths
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
