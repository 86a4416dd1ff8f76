"""What every capture source hands the pipeline: 32 kHz mono blocks with capture times.

``Source`` is the interface; ``RingSource`` is the shared consumer half of the sources whose
audio is produced by another thread (microphone callback, stdin reader): it drains their
``SpscRing``, downmixes, resamples and time-stamps the blocks, and splits the timeline at
the producer's segment markers so every returned block is contiguous in time.
"""

from __future__ import annotations

import time
from abc import ABC, abstractmethod
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from soundwatch.stream.resample import TARGET_RATE, StreamingResampler, downmix
from soundwatch.stream.ring import SpscRing


@dataclass(frozen=True)
class AudioBlock:
    """A run of contiguous 32 kHz mono samples.

    ``t_start`` is the Unix time (capture clock) of ``samples[0]``; sample ``i`` was captured
    at ``t_start + i / 32000``. ``t_ingest`` is the ``time.monotonic()`` at which the last
    input sample this block needed entered the source (for latency measurement).
    ``new_segment`` is True when this block does not continue the previous one (the first
    block after a device restart, an overflow or an overrun): the audio between is lost.
    """

    samples: np.ndarray
    t_start: float
    t_ingest: float
    new_segment: bool = False

    @property
    def duration(self) -> float:
        """Length in seconds."""
        return len(self.samples) / TARGET_RATE

    @property
    def t_end(self) -> float:
        """Unix time just after the last sample."""
        return self.t_start + len(self.samples) / TARGET_RATE


@dataclass
class SourceStats:
    """Cumulative counters of a source; every lost sample shows up here.

    * ``overflows``: PortAudio reported an input overflow (the OS lost samples before we saw
      them); each such callback counts once.
    * ``overruns``: producer writes that did not fully fit in the ring (new data dropped).
    * ``dropped_samples``: native-rate frames dropped by those overruns.
    * ``gaps``: discontinuities in the block timeline (device restart, time jump, overflow,
      overrun): the next block's ``t_start`` does not follow the previous block's end.
    * ``restarts``: times the device was reopened after it was lost.
    * ``samples_in``: native-rate frames delivered by the device/stream (including dropped).
    * ``device_losses``: times the device was noticed lost (counted at once, before the
      reopen that ``restarts`` counts).
    * ``device_lost``: 1 while the device is lost and being reopened, else 0; and
      ``device_lost_seconds``: for how long, in whole seconds (states, not counts: the
      fields here that go down again).
    * ``clock_resyncs``: times the device delivered more audio than real time (a backlog
      handed over at once, a fast device clock) so that the capture times would have run
      ahead of the real clock: the audio past it was skipped until the clock caught up, and
      the next block starts a new segment (its time follows on; not a gap). And
      ``clock_skipped_samples``: the native-rate frames skipped so (in ``samples_in``).
    """

    overflows: int = 0
    overruns: int = 0
    dropped_samples: int = 0
    gaps: int = 0
    restarts: int = 0
    samples_in: int = 0
    device_losses: int = 0
    device_lost: int = 0
    device_lost_seconds: int = 0
    clock_resyncs: int = 0
    clock_skipped_samples: int = 0


class Source(ABC):
    """A capture source. ``read`` returns 32 kHz mono float32 ``AudioBlock``s."""

    id: str
    native_rate: int
    channels: int

    @abstractmethod
    def start(self) -> None:
        """Begin capturing (open device/file, start threads)."""

    @abstractmethod
    def read(self, timeout: float) -> AudioBlock | None:
        """Next available audio; waits at most ``timeout`` s; None if nothing yet."""

    @property
    @abstractmethod
    def ended(self) -> bool:
        """True once a finite source is exhausted and everything was read."""

    @property
    def waits_when_behind(self) -> bool:
        """Whether the pipeline should wait for inference instead of dropping windows.

        True for sources that can be slowed down without losing audio: a pipe (the OS pipe
        then holds back the producing process) or a file read as fast as it is pulled.
        False (the default) for sources that run on the wall clock (a microphone, a
        real-time paced file or demo): when inference falls behind, their oldest windows
        are dropped and counted, so the tags stay current.
        """
        return False

    @abstractmethod
    def stats(self) -> SourceStats:
        """A snapshot of the cumulative counters."""

    @abstractmethod
    def stop(self) -> None:
        """Stop capturing; idempotent; joins threads and closes streams."""

    @abstractmethod
    def describe(self) -> dict[str, Any]:
        """What this source is, for status messages (kind, device/path, rates, ...)."""

    def __enter__(self) -> Source:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RingSource(Source):
    """Consumer half shared by thread-fed sources (microphone, raw PCM).

    The producer thread calls ``_produce(frames, t_first)`` and, at discontinuities,
    ``_mark_discontinuity()``; ``_produce`` never blocks, allocates arrays or locks, and
    drops (and counts) what does not fit. A producer that may wait (a pipe reader) checks
    ``_ring.free()`` first and only produces what fits. The counters it updates are plain
    attributes each written by one thread only.
    """

    #: The consumer polls the ring at this interval while waiting in ``read``.
    POLL_SECONDS = 0.005
    #: At most this much native audio is converted per returned block.
    MAX_BLOCK_SECONDS = 0.5

    def __init__(self, stream_id: str, native_rate: int, channels: int, ring_seconds: float):
        if ring_seconds <= 0:
            raise ValueError("ring_seconds must be positive")
        self.id = stream_id
        self.native_rate = int(native_rate)
        self.channels = int(channels)
        self.ring_seconds = float(ring_seconds)
        self._ring = SpscRing(max(1, round(ring_seconds * native_rate)), channels)
        self._resampler = StreamingResampler(self.native_rate, TARGET_RATE)
        self._max_read = max(1, int(self.MAX_BLOCK_SECONDS * self.native_rate))
        # Producer-side state and counters (written by the producer thread only).
        self._need_marker = True
        self._had_segment = False
        self._producer_done = False
        self._overflows = 0
        self._overruns = 0
        self._dropped = 0
        self._gaps = 0
        self._samples_in = 0
        self._marker_is_gap = True  # the pending marker follows lost audio (counted in gaps)
        self._clock_resyncs = 0
        self._clock_skipped = 0
        # Written by the supervising thread only.
        self._restarts = 0
        self._device_losses = 0
        self._lost_since: float | None = None  # time.monotonic() of the loss, while lost
        # Consumer-side state.
        self._segment_t0: float | None = None
        self._segment_started = False  # the next block starts a segment after a break
        self._had_output = False
        self._pending: deque[AudioBlock] = deque()
        self._last_ingest = time.monotonic()
        self._finished = False

    # ---------------------------------------------------------------- producer side
    def _mark_discontinuity(self, gap: bool = True) -> None:
        """The next produced frame does not follow the previous one: a new segment.

        ``gap``: audio was lost in between (counted in ``gaps``); False when the time runs
        on and only the audio does not (a clock resync skipped audio beyond real time).
        """
        self._marker_is_gap = gap or (self._need_marker and self._marker_is_gap)
        self._need_marker = True

    def _produce(self, frames: np.ndarray, t_first: float) -> None:
        """Store frames captured from Unix time ``t_first`` on; drop (and count) what won't fit."""
        n = len(frames)
        self._samples_in += n
        if self._need_marker:
            if not self._ring.push_marker(t_first):
                self._overruns += 1
                self._dropped += n
                self._marker_is_gap = True
                return
            if self._had_segment and self._marker_is_gap:
                self._gaps += 1
            self._had_segment = True
            self._need_marker = False
        written = self._ring.write(frames)
        if written < n:
            self._overruns += 1
            self._dropped += n - written
            self._mark_discontinuity()

    # ---------------------------------------------------------------- consumer side
    def read(self, timeout: float) -> AudioBlock | None:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            block = self._next_block()
            if block is not None:
                return block
            if self._finished:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            time.sleep(min(self.POLL_SECONDS, remaining))

    @property
    def ended(self) -> bool:
        return self._finished and not self._pending

    def stats(self) -> SourceStats:
        lost_since = self._lost_since
        lost_for = 0.0 if lost_since is None else time.monotonic() - lost_since
        return SourceStats(
            overflows=self._overflows,
            overruns=self._overruns,
            dropped_samples=self._dropped,
            gaps=self._gaps,
            restarts=self._restarts,
            samples_in=self._samples_in,
            device_losses=self._device_losses,
            device_lost=int(lost_since is not None),
            device_lost_seconds=int(lost_for),
            clock_resyncs=self._clock_resyncs,
            clock_skipped_samples=self._clock_skipped,
        )

    def _flush_segment(self) -> None:
        """Close the current segment: queue the resampler's tail as a last block."""
        if self._segment_t0 is None:
            return
        offset = self._resampler.samples_out
        tail = self._resampler.flush()
        if len(tail):
            t_start = self._segment_t0 + offset / TARGET_RATE
            self._pending.append(AudioBlock(tail, t_start, self._last_ingest))
        self._segment_t0 = None

    def _next_block(self) -> AudioBlock | None:
        while True:
            if self._pending:
                return self._pending.popleft()
            if self._finished:
                return None
            done = self._producer_done  # read before the ring: then the ring is final
            position = self._ring.read_position
            marker = self._ring.peek_marker()
            if marker is not None and marker[0] <= position:
                self._flush_segment()
                self._segment_t0 = marker[1]
                self._segment_started = self._had_output
                self._ring.pop_marker()
                continue
            limit = min(self._ring.available(), self._max_read)
            if marker is not None:
                limit = min(limit, marker[0] - position)
            if limit <= 0:
                if done and self._ring.available() == 0 and self._ring.peek_marker() is None:
                    self._flush_segment()
                    self._finished = True
                    continue
                return None
            frames = self._ring.read(limit)
            self._last_ingest = self._ring.ingest_time(position + limit)
            if self._segment_t0 is None:  # cannot happen: producers mark their first frame
                self._segment_t0 = time.time() - limit / self.native_rate
            offset = self._resampler.samples_out
            out = self._resampler.process(downmix(frames))
            if len(out):
                t_start = self._segment_t0 + offset / TARGET_RATE
                block = AudioBlock(out, t_start, self._last_ingest, self._segment_started)
                self._segment_started = False
                self._had_output = True
                return block
