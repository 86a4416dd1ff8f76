"""A lock-free single-producer/single-consumer ring buffer for audio frames.

The producer is an audio callback (PortAudio's thread) or a reader thread; the consumer is
the pipeline calling ``Source.read``. The producer must never block, allocate arrays, lock
or log, so the ring is a preallocated numpy array with two cumulative counters:

* ``_write_count``: frames ever written; only the producer assigns it.
* ``_read_count``: frames ever read; only the consumer assigns it.

Memory ordering: each side first copies the samples, then publishes the new count with one
attribute assignment. In CPython an attribute store is a single bytecode executed under the
GIL, so the other thread sees either the old or the new integer, never a torn one. Passing
the GIL between threads is a full memory barrier (a mutex release/acquire), and numpy
finishes a slice copy before the next bytecode runs (even when it drops the GIL for a large
copy, it takes it back before returning), so a consumer that sees the new ``_write_count``
also sees the samples written before it; likewise the producer never overwrites frames until
the consumer has published that it is done with them. Free-threaded CPython builds
(``python3.13t``) give no such guarantee and are not supported by this class.

Besides samples the ring carries two small side channels, each itself an SPSC ring with the
same publish-after-write discipline:

* segment markers ``(frame position, Unix time of that frame)``: the producer pushes one at
  the first frame and at every discontinuity (device restart, a time jump, dropped frames),
  so the consumer can time-stamp blocks and knows where the timeline breaks;
* an ingest log ``(cumulative frame count, time.monotonic())`` per write, from which the
  consumer learns when the last frame it consumed entered the ring (latency measurement).
"""

from __future__ import annotations

import time

import numpy as np


class SpscRing:
    """Fixed-capacity SPSC ring of ``(frames, channels)`` float32 samples.

    ``write`` stores as many frames as fit and returns that number: the caller counts what
    did not fit as dropped (new data is dropped, the producer never waits).
    """

    def __init__(self, capacity: int, channels: int, *, markers: int = 256, log: int = 1024):
        if capacity <= 0 or channels <= 0:
            raise ValueError("capacity and channels must be positive")
        self.capacity = int(capacity)
        self.channels = int(channels)
        self._buf = np.zeros((self.capacity, self.channels), dtype=np.float32)
        self._write_count = 0
        self._read_count = 0
        # Segment markers.
        self._marker_pos = np.zeros(markers, dtype=np.int64)
        self._marker_time = np.zeros(markers, dtype=np.float64)
        self._marker_written = 0
        self._marker_read = 0
        # Ingest log.
        self._log_end = np.zeros(log, dtype=np.int64)
        self._log_time = np.zeros(log, dtype=np.float64)
        self._log_written = 0

    # ---------------------------------------------------------------- producer side
    def free(self) -> int:
        """Frames that can be written now without dropping (producer side)."""
        return self.capacity - (self._write_count - self._read_count)

    def write(self, frames: np.ndarray) -> int:
        """Copy up to ``len(frames)`` frames in; return how many fit. Never blocks."""
        n = min(len(frames), self.capacity - (self._write_count - self._read_count))
        if n <= 0:
            return 0
        start = self._write_count % self.capacity
        first = min(n, self.capacity - start)
        self._buf[start : start + first] = frames[:first]
        if first < n:
            self._buf[: n - first] = frames[first:n]
        end = self._write_count + n
        slot = self._log_written % len(self._log_end)
        self._log_end[slot] = end
        self._log_time[slot] = time.monotonic()
        self._log_written += 1
        self._write_count = end  # publish last
        return n

    def push_marker(self, unix_time: float) -> bool:
        """Mark that the next written frame starts a new segment at ``unix_time``.

        Returns False (and records nothing) when the marker ring is full; the producer then
        drops the frames too and retries the marker with the next write.
        """
        if self._marker_written - self._marker_read >= len(self._marker_pos):
            return False
        slot = self._marker_written % len(self._marker_pos)
        self._marker_pos[slot] = self._write_count
        self._marker_time[slot] = unix_time
        self._marker_written += 1  # publish last
        return True

    # ---------------------------------------------------------------- consumer side
    def available(self) -> int:
        """Frames ready to be read (consumer side)."""
        return self._write_count - self._read_count

    @property
    def read_position(self) -> int:
        """Cumulative number of frames consumed so far."""
        return self._read_count

    def read(self, n: int) -> np.ndarray:
        """Return a copy of the next ``n`` frames (``n <= available()``) and release them."""
        if n > self._write_count - self._read_count:
            raise ValueError("read past the written data")
        start = self._read_count % self.capacity
        first = min(n, self.capacity - start)
        if first == n:
            out = self._buf[start : start + n].copy()
        else:
            out = np.concatenate((self._buf[start:], self._buf[: n - first]))
        self._read_count += n  # publish last: the producer may now reuse the space
        return out

    def peek_marker(self) -> tuple[int, float] | None:
        """The oldest unconsumed marker ``(frame position, Unix time)``, or None."""
        if self._marker_read == self._marker_written:
            return None
        slot = self._marker_read % len(self._marker_pos)
        return int(self._marker_pos[slot]), float(self._marker_time[slot])

    def pop_marker(self) -> None:
        """Release the marker returned by ``peek_marker``."""
        if self._marker_read < self._marker_written:
            self._marker_read += 1

    def ingest_time(self, end: int) -> float:
        """``time.monotonic()`` of the write that made frame ``end - 1`` available.

        Looks through the ingest log from newest to oldest; when the write was already
        overwritten (the consumer lagged more than the log length), returns the oldest logged
        time, which is later than the truth (the latency is then under-reported by at most
        the log's span).
        """
        written = self._log_written
        size = len(self._log_end)
        found = time.monotonic()
        for k in range(written - 1, max(written - size, 0) - 1, -1):
            slot = k % size
            if self._log_end[slot] < end:
                break
            found = float(self._log_time[slot])
        return found
