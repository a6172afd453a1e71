"""The reader with several decoding threads (``PrefetchReader(workers=...)``): batches in order, bounded
look-ahead, failures at their place in the stream, threads stopped on close."""
from __future__ import annotations

import threading
import time

import pytest

from gradcam.batch.reader import PrefetchReader


def test_several_workers_decode_at_once_and_keep_the_order():
    running, most = set(), [0]
    lock = threading.Lock()

    def decode(batch):
        with lock:
            running.add(batch)
            most[0] = max(most[0], len(running))
        time.sleep(0.02 if batch % 3 == 0 else 0.005)  # later batches finish first
        with lock:
            running.discard(batch)
        return batch * 10

    with PrefetchReader(range(30), decode, depth=2, workers=3) as reader:
        assert list(reader) == [batch * 10 for batch in range(30)]
    assert most[0] == 3


def test_workers_run_at_most_depth_plus_workers_batches_ahead():
    started = []

    def decode(batch):
        started.append(batch)
        return batch

    with PrefetchReader(range(100), decode, depth=2, workers=3) as reader:
        for consumed, batch in enumerate(reader, start=1):
            time.sleep(0.01)  # a slow model
            assert batch == consumed - 1
            assert len(started) <= consumed + 2 + 3
            if consumed == 10:
                break
    assert len(started) <= 10 + 2 + 3


def test_a_decoding_failure_comes_after_the_batches_before_it():
    def decode(batch):
        if batch == 4:
            raise OSError("disk gone")
        time.sleep(0.01 if batch < 4 else 0.0)  # the batches after it are decoded first
        return batch

    seen = []
    reader = PrefetchReader(range(10), decode, depth=2, workers=3)
    with pytest.raises(OSError, match="disk gone"), reader:
        seen.extend(reader)
    assert seen == [0, 1, 2, 3] and not reader._thread.is_alive()


def test_a_listing_failure_comes_after_every_batch_listed_before_it():
    def listing():
        yield from range(5)
        raise PermissionError("folder unreadable")

    def decode(batch):
        time.sleep(0.01)
        return batch

    seen = []
    with pytest.raises(PermissionError, match="unreadable"), PrefetchReader(listing(), decode, workers=3) as reader:
        seen.extend(reader)
    assert seen == [0, 1, 2, 3, 4]


def test_stopping_early_stops_every_thread():
    before = threading.active_count()
    with PrefetchReader(range(1000), lambda batch: batch, depth=1, workers=4) as reader:
        next(iter(reader))
    assert threading.active_count() == before


def test_depth_and_workers_are_checked():
    with pytest.raises(ValueError, match="at least 1"):
        PrefetchReader(range(3), lambda batch: batch, workers=0)
