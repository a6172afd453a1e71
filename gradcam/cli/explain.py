"""``gradcam explain``: heat maps and records for many images, streamed batch by batch, resumable.

The job itself is ``gradcam.batch``, the same whatever engine runs it:

- the inputs (``gradcam.batch.sources``), listed lazily; images already recorded are skipped (resume);
- ``Explainer`` (``gradcam.batch.job``): a decoded batch in, its records, PNG bytes and heat maps out;
- ``OutputSink`` (``gradcam.batch.records``): files first, then the records that name them.

The output folder holds one run: ``FolderLock`` (``gradcam.batch.lock``) keeps a second run out while the
first writes, and ``settings.json`` (``gradcam.batch.settings``) keeps a run with other settings from resuming
it.

This command checks the options, picks an engine, which moves batches from the first to the last (``local``
in this process with a prefetching reader thread, ``gradcam.engines.local``; ``ray`` as a Ray Data pipeline
with explainer actors, ``gradcam.engines.ray``), and prints the progress and the outcome.
"""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gradcam.batch.errors import JobError
from gradcam.batch.job import Explainer, ExplainJob, method_names
from gradcam.batch.layout import OutputLayout, Record
from gradcam.batch.loading import LoadedModel, ModelSpec
from gradcam.batch.lock import FolderLock
from gradcam.batch.records import (
    BatchOutput,
    OutputSink,
    PendingPictures,
    Recorded,
    read_recorded,
    remove_outputs,
    write_summary,
)
from gradcam.batch.settings import RunSettings, check_settings, write_settings
from gradcam.batch.sources import Sources, count_pending, pending_items

# The framework's OpenMP threads (torch's intra-op pool) spin by default for a while after each parallel region,
# waiting for the next. Here the reader's, the finisher's and NumPy's work share the cores with them, and the
# spinning took their time: Grad-CAM on a near-free model on 2 cores cost 2.9 ms of CPU per image with 2 torch
# threads, 1.3 ms with idle threads asleep (benchmarks/bench_overhead.py --command). OpenMP reads the policy
# once, when the framework loads, and the command imports this module before it loads the model. A policy the
# user set stands.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@dataclass(frozen=True)
class EngineOptions:
    """How batches are run: ``local`` (this process) or ``ray`` (actors of a Ray cluster, local by default)."""

    name: str = "local"
    actors: int = 1
    num_gpus: float = 0.0
    ray_address: str | None = None


class Progress:
    """The progress bar (rate always; total and ETA once known) and the counts of the run."""

    def __init__(self) -> None:
        self.bar = tqdm(unit="img", desc="explain", file=sys.stderr, disable=None, smoothing=0.1)
        self.done = 0
        self.failed = 0
        self.counted: int | None = None
        self._stop_counting = threading.Event()
        self._counter: threading.Thread | None = None

    def count_in_background(self, sources: Sources, recorded: Recorded) -> None:
        """Count the inputs still to do in a thread (a second walk of the folders), for the ETA; only when
        the bar is shown."""
        if self.bar.disable:
            return

        def count() -> None:
            self.counted = count_pending(sources, recorded, self._stop_counting)

        self._counter = threading.Thread(target=count, name="gradcam-count", daemon=True)
        self._counter.start()

    def set_total(self, total: int) -> None:
        if self.bar.total is None:
            self.bar.total = total
            self.bar.refresh()

    def add(self, output: BatchOutput) -> None:
        for record in output.records:
            if Record.is_error(record):
                tqdm.write(f"gradcam: error: {record['error']}", file=sys.stderr)
        self.done += len(output.records)
        self.failed += output.errors
        if self.counted is not None:
            self.set_total(self.counted)
        self.bar.update(len(output.records))

    def close(self) -> None:
        self._stop_counting.set()
        if self._counter is not None:
            self._counter.join()
        self.bar.close()


def run_explain(
    loaded: LoadedModel,
    paths: list[Path],
    output_dir: Path,
    method_list: list[str],
    layer: str | None,
    class_id: int | None,
    image_size: tuple[int, int] | None,
    batch_size: int,
    options: dict[str, Any],
    overwrite: bool = False,
    *,
    manifest: Path | None = None,
    save_maps: bool = True,
    npz_shards: int = 0,
    model_spec: ModelSpec | None = None,
    engine: EngineOptions = EngineOptions(),
) -> int:
    """Explain every input not yet recorded in ``output_dir``; returns the exit status (0, or 1 when some
    image could not be explained).

    ``paths`` are files, folders or glob patterns (see ``Sources``), ``manifest`` a list of more. With
    ``save_maps`` each image gets PNG heat maps and overlays; with ``npz_shards`` > 0 its heat maps also go
    into ``.npz`` shards of that many images. ``model_spec`` (how to load ``loaded`` again) is needed by
    engines that load the model in other processes.
    """
    if batch_size < 1:
        raise JobError(f"--batch-size must be at least 1, got {batch_size}")
    if npz_shards < 0:
        raise JobError(f"--npz-shards must be a number of images per shard, got {npz_shards}")
    if engine.actors < 1 or engine.num_gpus < 0:
        raise JobError(
            f"--actors must be at least 1 and --num-gpus at least 0, got {engine.actors} and {engine.num_gpus:g}"
        )
    if engine.name == "ray" and model_spec is None:
        raise ValueError("the ray engine loads the model in its workers: pass model_spec")
    if engine.name == "ray" and engine.num_gpus > 0 and loaded.backend == "torch" and not model_spec.device:
        model_spec = replace(model_spec, device="cuda")  # each actor sees only its own GPUs, as cuda:0, ...
    names = method_names(method_list, loaded)
    method_options = {key: options.get(key) for key in ("fc_layer", "n_samples", "noise_level")}
    size = tuple(image_size or loaded.image_size)
    job = ExplainJob(
        model_spec or ModelSpec(), tuple(names), layer, class_id, size, batch_size, method_options,
        options.get("max_pixels"), pictures=save_maps, shard_maps=npz_shards > 0,
    )
    explainer = job.explainer(loaded)
    sources = Sources(paths, manifest)
    settings = RunSettings.of(
        loaded, model_spec, job.methods, layer, class_id, size, method_options, save_maps, npz_shards > 0
    )
    sources.check_output_folder(output_dir, save_maps)
    make_folder(output_dir)
    with FolderLock(output_dir):
        if overwrite:
            remove_outputs(output_dir, keep=sources.would_read)
        else:
            check_settings(output_dir, settings)
        write_settings(output_dir, settings)
        progress = run_in_folder(job, explainer, sources, output_dir, npz_shards, engine)
        summary = write_summary(output_dir, settings.as_json())
    print(
        f"gradcam: explained {progress.done - progress.failed} of {progress.done} images with {', '.join(names)}; "
        f"results in {output_dir}/ (summary: {summary})"
    )
    return 1 if progress.failed else 0


def make_folder(output_dir: Path) -> None:
    """Create ``output_dir``; a ``JobError`` (one line) when it cannot be (a file is in the way, no permission)."""
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise JobError(f"--output-dir {output_dir} is a file, not a folder") from None
    except OSError as error:
        raise JobError(f"--output-dir {output_dir} cannot be created ({error.strerror})") from None


def run_in_folder(
    job: ExplainJob,
    explainer: Explainer,
    sources: Sources,
    output_dir: Path,
    npz_shards: int,
    engine: EngineOptions,
) -> Progress:
    """Explain the inputs of ``sources`` not yet recorded in ``output_dir`` (which this run holds locked) with
    ``engine``; returns the progress, with the counts."""
    layout = OutputLayout(output_dir)
    recorded = read_recorded(layout.records, key=sources.key)
    # with pictures, each input's stem is checked against the inputs and the files already in the folder
    output_files = partial(layout.picture_files, methods=job.methods) if job.pictures else None
    replaceable = {layout.folder / name for name in PendingPictures(output_dir).names()}
    items = pending_items(sources, recorded, output_files, replaceable)
    progress = Progress()
    sink = OutputSink(output_dir, npz_shards)

    def emit(output: BatchOutput) -> None:
        sink.write(output)
        progress.add(output)

    try:
        if engine.name == "ray":
            from gradcam.engines.ray import RaySettings, run_ray

            settings = RaySettings(engine.actors, engine.num_gpus, engine.ray_address)
            run_ray(job, items, emit, settings, on_total=progress.set_total)
        else:
            from gradcam.engines.local import run_local

            progress.count_in_background(sources, recorded)
            run_local(job, explainer, items, emit)
    finally:
        sink.close()
        progress.close()
    return progress
