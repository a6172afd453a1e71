"""The Ray engine: ``gradcam explain`` as a Ray Data pipeline, on one machine or a cluster.

    inputs (driver) -> decode (Ray tasks, CPU) -> explain (actor pool, one model per actor) -> records (driver)

The driver lists the inputs still to do (resume works as in the local engine) into small Arrow tables in
the object store (which spills them to disk if need be), so it holds no list of its own, and the total is
known for the progress bar before the first batch. Decoding tasks
read and resize the images on any CPU of the cluster; the explainer actors (``ExplainActor``) each load the
model once and run the same ``Explainer`` as the local engine, so the records are the same. Everything the
actors produce (records, PNG bytes, heat maps) streams back to the driver, the only writer of the output
folder: a cluster needs the inputs on storage every node can read, but the output folder only on the driver.

Failures: actors are restarted without limit (``max_restarts=-1``) and a batch whose actor died is retried
on the restarted actor (``max_task_retries``), so a worker that dies mid-run costs time, not images. A batch
that kills its actor ``max_task_retries + 1`` times fails the run instead of looping forever; what was
written so far stays, and running the command again resumes.
"""
from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from gradcam.batch.errors import JobError
from gradcam.batch.job import ExplainJob
from gradcam.batch.layout import PictureKey
from gradcam.batch.reader import DecodedBatch
from gradcam.batch.records import BatchOutput
from gradcam.batch.sources import InputItem, batched

ITEMS_PER_BLOCK = 4096
Columns = dict[str, np.ndarray]


@dataclass(frozen=True)
class RaySettings:
    """The pool of explainer actors and the cluster they run on.

    Attributes
    ----------
    actors : number of explainer actors (each loads the model once).
    num_gpus : GPUs per actor (0: CPU inference).
    address : an existing cluster (``ray://host:10001``, ``host:6379`` or ``auto``); None starts a local instance.
    max_task_retries : how often a batch is retried after its actor died.
    """

    actors: int = 1
    num_gpus: float = 0.0
    address: str | None = None
    max_task_retries: int = 3


# --- columns: what travels between the stages ----------------------------------------------------


def item_columns(items: list[InputItem]) -> Columns:
    return {
        "path": np.array([item.path for item in items], dtype=object),
        "name": np.array([item.name for item in items], dtype=object),
        "target": np.array([-1 if item.target is None else item.target for item in items], dtype=np.int64),
        "item_error": np.array([item.error or "" for item in items], dtype=object),
    }


def items_from_columns(columns: Columns) -> list[InputItem]:
    return [
        InputItem(str(path), str(name), None if target < 0 else int(target), str(error) or None)
        for path, name, target, error in zip(
            columns["path"], columns["name"], columns["target"], columns["item_error"], strict=True
        )
    ]


def objects(values: list[Any]) -> np.ndarray:
    """A 1-D object array of ``values`` (``np.array`` would merge equal-shaped arrays into one block)."""
    array = np.empty(len(values), dtype=object)
    for i, value in enumerate(values):
        array[i] = value
    return array


def decoded_columns(batch: DecodedBatch) -> Columns:
    columns = item_columns(batch.items)
    columns["pixels"] = batch.pixels
    columns["read_error"] = np.array([error or "" for error in batch.errors], dtype=object)
    if batch.originals is not None:
        columns["original"] = objects(batch.originals)
    return columns


def decoded_from_columns(columns: Columns) -> DecodedBatch:
    originals = [np.asarray(o, dtype=np.uint8) for o in columns["original"]] if "original" in columns else None
    errors = [str(error) or None for error in columns["read_error"]]
    return DecodedBatch(items_from_columns(columns), np.asarray(columns["pixels"], dtype=np.uint8), errors, originals)


def output_columns(output: BatchOutput) -> Columns:
    columns = {"record": np.array([json.dumps(r) for r in output.records], dtype=object)}
    for key, pictures in output.pictures.items():
        columns[f"png:{key}"] = objects(pictures)
    for method, maps in output.maps.items():
        columns[f"map:{method}"] = maps
    return columns


def output_from_columns(columns: Columns) -> BatchOutput:
    return BatchOutput(
        records=[json.loads(text) for text in columns["record"]],
        pictures={
            PictureKey(key[4:]): [bytes(b) for b in values] for key, values in columns.items() if key.startswith("png:")
        },
        maps={key[4:]: np.asarray(values, dtype=np.uint8) for key, values in columns.items() if key.startswith("map:")},
    )


# --- the two stages ---------------------------------------------------------------------------------


def decode_stage(columns: Columns, job: ExplainJob) -> Columns:
    """Ray task: read and resize one batch of images."""
    return decoded_columns(job.decode(items_from_columns(columns)))


class ExplainActor:
    """Ray actor: loads the model once (``ExplainJob.explainer``), then explains batch after batch.

    ``threads``: framework threads for CPU inference (None: Ray's default, one per CPU the actor holds).
    """

    def __init__(self, job: ExplainJob, threads: int | None = None) -> None:
        if threads:
            # Ray set OMP_NUM_THREADS to the actor's share of CPUs (one, or a fraction); the thread pools of
            # the libraries loaded just below (the framework, NumPy's BLAS) are sized from it.
            os.environ["OMP_NUM_THREADS"] = str(threads)
        self.explainer = job.explainer()
        if threads and self.explainer.loaded.backend == "torch":
            import torch  # already loaded with the model; in a reused worker it may have been loaded before

            torch.set_num_threads(threads)

    def __call__(self, columns: Columns) -> Columns:
        return output_columns(self.explainer.explain(decoded_from_columns(columns)))


# --- resources ------------------------------------------------------------------------------------


def stage_resources(settings: RaySettings, cluster_cpus: float) -> tuple[dict[str, Any], float, int | None]:
    """Ray resources of one actor, of one decoding task, and the actor's thread count (None: Ray's default).

    With GPUs an actor takes one CPU to feed its GPU; the other CPUs decode. Without, the actors share all
    CPUs but one (or half of one), which is left to the decoding tasks so that they can always run; the
    actors' framework threads then use the whole machine, as the bare model would.
    """
    if settings.num_gpus > 0:
        return {"num_cpus": 1, "num_gpus": settings.num_gpus}, 1, None
    decode_cpus = min(1.0, cluster_cpus / 2)
    share = (cluster_cpus - decode_cpus) / settings.actors
    actor_cpus = math.floor(share) if share >= 1 else share  # Ray takes whole numbers above one CPU
    return {"num_cpus": actor_cpus}, decode_cpus, max(1, int(cluster_cpus // settings.actors))


def check_cluster(settings: RaySettings, resources: dict[str, float]) -> None:
    """Refuse a pool the cluster cannot hold (Ray would wait for the GPUs forever)."""
    gpus = resources.get("GPU", 0)
    if settings.num_gpus * settings.actors > gpus:
        raise JobError(
            f"--actors {settings.actors} with --num-gpus {settings.num_gpus} each need "
            f"{settings.num_gpus * settings.actors:g} GPUs; the Ray cluster has {gpus:g}"
        )


# --- the run --------------------------------------------------------------------------------------


def connect(settings: RaySettings) -> bool:
    """Join ``settings.address`` or start a local Ray instance; returns whether this call started Ray."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.ERROR}
    try:
        if settings.address:
            ray.init(address=settings.address, **options)
        else:
            ray.init(num_cpus=os.cpu_count(), **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise JobError(f"cannot start or join Ray ({settings.address or 'local'}): {error}") from None
    return True


def put_items(items: Iterable[InputItem]) -> tuple[list[Any], int]:
    """The inputs as Arrow tables of ``ITEMS_PER_BLOCK`` rows in the object store; returns their refs and count."""
    import pyarrow as pa
    import ray

    refs, total = [], 0
    for block in batched(items, ITEMS_PER_BLOCK):
        columns = item_columns(block)
        refs.append(ray.put(pa.table({key: list(values) for key, values in columns.items()})))
        total += len(block)
    return refs, total


def pipeline(refs: list[Any], job: ExplainJob, settings: RaySettings) -> Any:
    """The Ray Data dataset: input refs -> batches -> decoding tasks -> explainer actors."""
    import ray.data

    actor, decode_cpus, threads = stage_resources(settings, ray.cluster_resources().get("CPU", 1.0))
    # One block per batch, so that batches spread over the actors and a dead actor's retry costs one batch.
    batches = ray.data.from_arrow_refs(refs).repartition(target_num_rows_per_block=job.batch_size)
    decoded = batches.map_batches(
        decode_stage, fn_kwargs={"job": job}, batch_size=job.batch_size, batch_format="numpy", num_cpus=decode_cpus
    )
    with warnings.catch_warnings():
        # Ray 2.60 marks max_restarts / max_task_retries given to map_batches as deprecated, but has no named
        # parameter for them yet; they are what bounds the retries of a batch whose actor died.
        warnings.simplefilter("ignore", category=DeprecationWarning)
        return decoded.map_batches(
            ExplainActor,
            fn_constructor_kwargs={"job": job, "threads": threads},
            batch_size=job.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=settings.actors),
            max_restarts=-1,
            max_task_retries=settings.max_task_retries,
            **actor,
        )


def quiet_ray_data() -> None:
    """Our progress bar and error lines only: no Ray Data progress bars or execution logs."""
    import ray.data

    logging.getLogger("ray.data").setLevel(logging.ERROR)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def run_ray(
    job: ExplainJob,
    items: Iterator[InputItem],
    emit: Callable[[BatchOutput], None],
    settings: RaySettings,
    on_total: Callable[[int], None],
) -> None:
    """Explain ``items`` with a pool of ``settings.actors`` explainer actors; ``emit`` each output batch.

    ``on_total`` receives the number of inputs once they are listed (before the first batch).
    """
    import ray
    from ray.exceptions import RayError

    started = connect(settings)
    try:
        check_cluster(settings, ray.cluster_resources())
        quiet_ray_data()
        refs, total = put_items(items)
        on_total(total)
        if total == 0:
            return
        for columns in pipeline(refs, job, settings).iter_batches(batch_size=None, batch_format="numpy"):
            emit(output_from_columns(columns))
    except RayError as error:
        cause = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
        raise JobError(
            f"the Ray pipeline failed ({cause}); what was written is kept: run the command again to resume"
        ) from None
    finally:
        if started:
            ray.shutdown()
