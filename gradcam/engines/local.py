"""The local engine: three stages in this process, in their own threads, joined by small bounded queues.

    reader: list; DECODERS threads: read, decode   ->   this thread: the model   ->   finisher: records, PNGs, writing

Decoding the next batches and finishing the previous one (boxes, records, PNG encoding, writing) overlap the
model, which is what sets the pace. Two decoding threads, because one is not always faster than the model: a
224-px PNG takes about 2 ms to decode, a near-free model's Grad-CAM about 1.5 ms on one core. At most
``QUEUE_BATCHES`` batches wait between two stages and ``DECODERS`` are being decoded, so memory stays the same
whatever the number of images.
"""
from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable
from typing import Any

from gradcam.batch.job import Explained, Explainer, ExplainJob
from gradcam.batch.reader import PrefetchReader
from gradcam.batch.records import BatchOutput
from gradcam.batch.sources import InputItem, batched

QUEUE_BATCHES = 2
DECODERS = 2
_END = object()


class Finisher:
    """Runs ``finish`` on each submitted piece of work, in order, in a background thread.

    ``submit`` blocks while ``depth`` pieces wait. The first exception ``finish`` raises is raised again by
    the next ``submit`` or by ``close``; later work is then dropped. Work submitted before an exception in
    the submitting thread is still finished on close (so explained batches are written, not lost).
    """

    def __init__(self, finish: Callable[[Any], None], depth: int = QUEUE_BATCHES) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, args=(finish,), name="gradcam-finisher", daemon=True)
        self._thread.start()

    def _run(self, finish: Callable[[Any], None]) -> None:
        while (work := self._queue.get()) is not _END:
            if self._error is None:
                try:
                    finish(work)
                except BaseException as error:  # noqa: BLE001 - handed to the submitting thread
                    self._error = error

    def submit(self, work: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(work)

    def close(self) -> None:
        self._queue.put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def __enter__(self) -> Finisher:
        return self

    def __exit__(self, exc_type: type | None, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:  # the exception on its way out is the one to report; still write what was explained
            self._queue.put(_END)
            self._thread.join()


def run_local(
    job: ExplainJob,
    explainer: Explainer,
    items: Iterable[InputItem],
    emit: Callable[[BatchOutput], None],
    decoders: int = DECODERS,
) -> None:
    """Explain ``items`` batch by batch with ``explainer``; ``emit`` each batch's output, in order, from the
    finisher thread. ``decoders``: threads that decode batches ahead of the model."""

    def finish(explained: Explained) -> None:
        emit(explainer.finish(explained))

    batches = batched(items, job.batch_size)
    reading = PrefetchReader(batches, job.decode, depth=QUEUE_BATCHES, workers=decoders)
    with reading as reader, Finisher(finish) as finisher:
        for batch in reader:
            finisher.submit(explainer.run(batch))
