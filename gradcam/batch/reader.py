"""Reading images ahead of the model: batches decoded in background threads, through a small bounded queue.

While the model explains batch ``k``, threads list, read, decode and resize the next batches (Pillow
releases the GIL while it decodes and resizes), so decoding costs no time as long as it is faster than the
model. The queue holds at most ``depth`` decoded batches, so memory stays the same whatever the number of
images: the reader never runs more than ``depth + workers`` batches ahead of the model (``depth`` waiting,
``workers`` being decoded).
"""
from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from gradcam.batch.sources import InputItem
from gradcam.images import ImageReadError, decode, fit_within, open_image

Batch = TypeVar("Batch")
Decoded = TypeVar("Decoded")


# The long side of the originals kept for overlays: an overlay is drawn at the image's own size up to this,
# and at the image reduced to it beyond (aspect ratio kept), so that a batch of large images, several
# batches in flight and the overlay's arithmetic stay within a few hundred MB.
ORIGINAL_MAX_SIDE = 1024


@dataclass
class DecodedBatch:
    """A batch of images ready for the model.

    Attributes
    ----------
    items : the inputs, in order.
    pixels : ``(n, H, W, 3)`` uint8, each image resized to the model's input size; zeros where it failed.
    errors : per item, why it could not be read, or None.
    originals : per item, the image at its own size, reduced to a long side of ``ORIGINAL_MAX_SIDE`` when
        larger (for overlays drawn at that size), or None when the run draws no overlay; an empty
        ``(0, 0, 3)`` array where it failed.
    """

    items: list[InputItem]
    pixels: np.ndarray
    errors: list[str | None]
    originals: list[np.ndarray] | None = None


def decode_batch(
    items: list[InputItem],
    size: tuple[int, int],
    max_pixels: int | None = None,
    keep_originals: bool = False,
    original_side: int | None = ORIGINAL_MAX_SIDE,
) -> DecodedBatch:
    """Read ``items``, each resized to ``size`` (bilinear) and, with ``keep_originals``, also kept at its own
    size with its long side cut to ``original_side`` (None: uncut).

    Each image is reduced while it is decoded to what these two sizes need (``gradcam.images.decode``), so
    a large image never costs more than its decoded file; unreadable files become errors.
    """
    pixels = np.zeros((len(items), *size, 3), np.uint8)
    errors: list[str | None] = []
    originals: list[np.ndarray] = []
    for i, item in enumerate(items):
        original = np.zeros((0, 0, 3), np.uint8)
        error = item.error
        if error is None:
            try:
                with open_image(item.path, max_pixels) as image:
                    sizes = [size]
                    if keep_originals:
                        sizes.append(fit_within((image.height, image.width), original_side))
                    pixels[i], *kept = decode(image, sizes)
            except ImageReadError as failure:
                error = str(failure)
            else:
                original = kept[0] if keep_originals else original
        errors.append(error)
        originals.append(original)
    return DecodedBatch(list(items), pixels, errors, originals if keep_originals else None)


class _Failure:
    """An exception raised in the reader thread, carried to the consumer, which raises it again."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


class PrefetchReader(Generic[Batch, Decoded]):
    """Iterates ``decode(batch)`` for each of ``batches``, computed in background threads ahead of the caller.

    ``batches`` is consumed in one thread (listing folders overlaps the model as well), which hands each batch
    to one of ``workers`` decoding threads and queues the decoded batches in their order. Several workers
    decode several batches at once: what a model faster than one thread's decoding needs (a 224-px PNG takes
    about 2 ms to decode, a near-free model's Grad-CAM about 1.5 ms on one core). At most ``depth`` decoded
    batches wait and ``workers`` are being decoded, so the reader never runs more than ``depth + workers``
    batches ahead of the consumer, whatever the number of images.

    An exception in listing or decoding is raised to the caller at the point in the stream where it happened.
    Use as a context manager (or call ``close``) so that stopping early also stops the threads.
    """

    def __init__(
        self, batches: Iterable[Batch], decode: Callable[[Batch], Decoded], depth: int = 2, workers: int = 1
    ) -> None:
        if depth < 1 or workers < 1:
            raise ValueError(f"depth and workers must be at least 1, got {depth} and {workers}")
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="gradcam-decode")
        self._thread = threading.Thread(
            target=self._produce, args=(batches, decode, workers), name="gradcam-reader", daemon=True
        )
        self._thread.start()

    def _produce(self, batches: Iterable[Batch], decode: Callable[[Batch], Decoded], workers: int) -> None:
        pending: deque[Future] = deque()
        failure: BaseException | None = None
        try:
            for batch in batches:
                if self._stop.is_set():
                    return
                pending.append(self._pool.submit(decode, batch))
                if len(pending) == workers and not self._deliver(pending.popleft()):
                    return
        except BaseException as error:  # noqa: BLE001 - every failure must reach the consumer, not die here
            failure = error
        # the batches listed before a failure in listing come first, as they would have without it
        while pending:
            if not self._deliver(pending.popleft()):
                return
        self._put(_END if failure is None else _Failure(failure))

    def _deliver(self, decoding: Future) -> bool:
        """Queue the batch ``decoding`` returns, or its failure; whether the stream goes on."""
        try:
            decoded = decoding.result()
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            self._put(_Failure(error))
            return False
        return self._put(decoded)

    def _put(self, value: object) -> bool:
        # A timeout, not a plain blocking put: a consumer that stopped early must not leave this thread stuck.
        while not self._stop.is_set():
            try:
                self._queue.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Decoded]:
        while True:
            value = self._queue.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PrefetchReader[Batch, Decoded]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
