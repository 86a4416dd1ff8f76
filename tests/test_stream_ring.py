"""SPSC ring buffer and the shared ring-source consumer: wraparound, overruns, markers, threads."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import numpy as np
import pytest
from conftest import resample_offline

from soundwatch.stream.base import RingSource
from soundwatch.stream.ring import SpscRing


def _ramp(start: int, n: int, channels: int = 1) -> np.ndarray:
    values = np.arange(start, start + n, dtype=np.float32)
    return np.repeat(values[:, None], channels, axis=1)


def test_wraparound_preserves_order_and_channels():
    ring = SpscRing(10, 2)
    position = 0
    expected = 0
    for size in [7, 3, 6, 9, 1, 10, 4]:
        assert ring.write(_ramp(position, size, 2)) == size
        position += size
        out = ring.read(ring.available())
        np.testing.assert_array_equal(out, _ramp(expected, len(out), 2))
        expected += len(out)
    assert ring.available() == 0
    assert ring.read_position == position


def test_full_ring_drops_new_data_and_reports_partial_write():
    ring = SpscRing(10, 1)
    assert ring.write(_ramp(0, 6)) == 6
    assert ring.write(_ramp(6, 6)) == 4  # only 4 fit: the last 2 new frames are dropped
    assert ring.write(_ramp(12, 3)) == 0
    assert ring.free() == 0
    np.testing.assert_array_equal(ring.read(10)[:, 0], np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError):
        ring.read(1)


def test_markers_and_ingest_times():
    ring = SpscRing(100, 1)
    assert ring.push_marker(1000.0)
    ring.write(_ramp(0, 10))
    t_after_first = time.monotonic()
    ring.write(_ramp(10, 10))
    assert ring.push_marker(2000.0)
    ring.write(_ramp(20, 5))
    assert ring.peek_marker() == (0, 1000.0)
    ring.pop_marker()
    assert ring.peek_marker() == (20, 2000.0)
    assert ring.ingest_time(10) <= t_after_first < ring.ingest_time(11)
    small = SpscRing(10, 1, markers=2)
    assert small.push_marker(1.0) and small.push_marker(2.0)
    assert not small.push_marker(3.0)


def test_spsc_two_threads_lose_nothing_when_the_producer_waits():
    ring = SpscRing(257, 1)
    total = 200_000
    rng = np.random.default_rng(1)
    sizes = rng.integers(1, 200, size=5000)

    stop = threading.Event()  # set when the consumer gives up, so the producer ends too

    def produce() -> None:
        position = 0
        k = 0
        while position < total:
            size = int(min(sizes[k % len(sizes)], total - position))
            k += 1
            chunk = _ramp(position, size)
            done = 0
            while done < size:
                done += ring.write(chunk[done:])
                if done < size:
                    if stop.is_set():
                        return
                    time.sleep(0)
            position += size

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    received = []
    count = 0
    deadline = time.monotonic() + 30
    while count < total and time.monotonic() < deadline:
        n = ring.available()
        if n:
            out = ring.read(min(n, int(rng.integers(1, 300))))
            received.append(out[:, 0])
            count += len(out)
        else:
            time.sleep(0)
    stop.set()
    producer.join(timeout=30)
    assert count == total and not producer.is_alive()
    data = np.concatenate(received)
    np.testing.assert_array_equal(data, np.arange(total, dtype=np.float32))


class _ThreadFed(RingSource):
    """A minimal real RingSource: a test thread is the producer."""

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"kind": "test"}

    def finish(self) -> None:
        self._producer_done = True


def test_ring_source_counts_overruns_gaps_and_restamps_after_a_drop():
    rate = 32000
    source = _ThreadFed("t", rate, 1, ring_seconds=1000 / rate)  # ring of 1000 frames
    t0 = 1_700_000_000.0
    source._produce(_ramp(0, 400), t0)
    source._produce(_ramp(400, 400), t0 + 400 / rate)
    source._produce(_ramp(800, 400), t0 + 800 / rate)  # 200 fit, 200 dropped
    stats = source.stats()
    counters = (stats.overruns, stats.dropped_samples, stats.gaps, stats.samples_in)
    assert counters == (1, 200, 0, 1200)
    first = source.read(0)
    assert first is not None and first.t_start == t0
    np.testing.assert_array_equal(first.samples, np.arange(1000, dtype=np.float32))
    source._produce(_ramp(1200, 300), t0 + 1200 / rate)  # after the drop: a new segment
    assert source.stats().gaps == 1
    source.finish()
    blocks = []
    while not source.ended:
        block = source.read(0.01)
        if block is not None:
            blocks.append(block)
    assert blocks[-1].t_start == t0 + 1200 / rate
    np.testing.assert_array_equal(blocks[-1].samples, np.arange(1200, 1500, dtype=np.float32))


def test_ring_source_resamples_each_segment_like_torchaudio():
    rate = 48000
    source = _ThreadFed("t", rate, 2, ring_seconds=2.0)
    rng = np.random.default_rng(2)
    first = rng.standard_normal((rate, 2)).astype(np.float32) * 0.1
    second = rng.standard_normal((rate // 2, 2)).astype(np.float32) * 0.1
    t0 = 1_700_000_000.0
    for start in range(0, rate, 960):
        source._produce(first[start : start + 960], t0 + start / rate)
    source._mark_discontinuity()
    source._produce(second, t0 + 5.0)
    source.finish()
    blocks = []
    while not source.ended:
        block = source.read(0.01)
        if block is not None:
            blocks.append(block)
    split = next(i for i, b in enumerate(blocks) if b.t_start >= t0 + 5.0)
    seg1 = np.concatenate([b.samples for b in blocks[:split]])
    seg2 = np.concatenate([b.samples for b in blocks[split:]])
    np.testing.assert_allclose(seg1, resample_offline(first.mean(axis=1), rate), atol=1e-5)
    np.testing.assert_allclose(seg2, resample_offline(second.mean(axis=1), rate), atol=1e-5)
    for a, b in itertools.pairwise(blocks[:split]):
        assert b.t_start == pytest.approx(a.t_end, abs=1e-6)
    assert source.stats().gaps == 1
