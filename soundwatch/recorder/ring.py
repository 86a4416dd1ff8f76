"""A per-stream ring of the last seconds of 32 kHz audio, for cutting event clips.

Written on the stream thread (one preallocated buffer, one copy per block, no allocation
and no disk), read on the recorder's writer thread. Times follow the pipeline's own rule:
sample ``k`` of a segment lies at the segment's first block time plus ``k / 32000``, the
same clock the event detector's onsets and offsets are measured on. A new segment starts
where the source lost audio; a clip never spans two segments.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

import numpy as np

from soundwatch.stream import AudioBlock
from soundwatch.stream.resample import TARGET_RATE

#: A block starting this far from where the last one ended starts a new segment.
JUMP_S = 0.1


@dataclass(frozen=True)
class Cut:
    """Audio cut from the ring: ``samples`` start at ``t_start`` (Unix s, capture clock)."""

    samples: np.ndarray
    t_start: float

    @property
    def t_end(self) -> float:
        return self.t_start + len(self.samples) / TARGET_RATE

    def until(self, t_end: float) -> Cut:
        """The part before ``t_end``."""
        keep = max(0, min(len(self.samples), round((t_end - self.t_start) * TARGET_RATE)))
        return Cut(self.samples[:keep], self.t_start)


class AudioRing:
    """The last ``seconds`` of one stream's audio, with the time of every sample."""

    def __init__(self, seconds: float, rate: int = TARGET_RATE) -> None:
        self.rate = rate
        self.capacity = max(1, round(seconds * rate))
        self._buf = np.zeros(self.capacity, dtype=np.float32)
        self._written = 0  # samples ever written: the absolute index of the next one
        self._segments: deque[tuple[int, float]] = deque()  # (first index, its Unix time)
        self._lock = threading.Lock()

    # --- stream thread -------------------------------------------------------------
    def write(self, block: AudioBlock) -> None:
        """Append a block (a copy). A block flagged ``new_segment``, or one that does not
        follow the last (the stream was paused), starts a new segment."""
        samples = block.samples
        with self._lock:
            head = self._head()
            if block.new_segment or head is None or abs(block.t_start - head) > JUMP_S:
                self._segments.append((self._written, block.t_start))
            n = len(samples)
            if n > self.capacity:
                samples = samples[n - self.capacity :]
            start = (self._written + n - len(samples)) % self.capacity
            first = min(self.capacity - start, len(samples))
            self._buf[start : start + first] = samples[:first]
            self._buf[: len(samples) - first] = samples[first:]
            self._written += n
            oldest = self._written - self.capacity
            while len(self._segments) > 1 and self._segments[1][0] <= oldest:
                self._segments.popleft()

    # --- any thread ----------------------------------------------------------------
    def head_time(self) -> float | None:
        """Unix time just after the newest sample (None before any audio)."""
        with self._lock:
            return self._head()

    def _head(self) -> float | None:
        if not self._segments:
            return None
        index, t = self._segments[-1]
        return t + (self._written - index) / self.rate

    def cut(self, t_from: float, t_to: float, anchor: float) -> Cut | None:
        """The audio of ``[t_from, t_to)`` still held, within the segment that holds
        ``anchor`` (the event's onset); None when none of it is held."""
        with self._lock:
            segments = list(self._segments)
            seg = max((i for i, (_, t) in enumerate(segments) if t <= anchor + 1e-6), default=None)
            if seg is None:
                return None
            seg_index, seg_t = segments[seg]
            seg_end = segments[seg + 1][0] if seg + 1 < len(segments) else self._written
            lo = max(seg_index + round((t_from - seg_t) * self.rate), seg_index)
            lo = max(lo, self._written - self.capacity)
            hi = min(seg_index + round((t_to - seg_t) * self.rate), seg_end)
            if hi <= lo:
                return None
            out = np.empty(hi - lo, dtype=np.float32)
            start = lo % self.capacity
            first = min(self.capacity - start, hi - lo)
            out[:first] = self._buf[start : start + first]
            out[first:] = self._buf[: hi - lo - first]
            return Cut(out, seg_t + (lo - seg_index) / self.rate)

    def last(self, seconds: float) -> Cut | None:
        """Up to the newest ``seconds`` of audio, all from the newest segment (audio before
        a loss is never joined to audio after it); None before any audio."""
        with self._lock:
            if not self._segments:
                return None
            seg_index, seg_t = self._segments[-1]
            hi = self._written
            lo = max(hi - round(seconds * self.rate), seg_index, hi - self.capacity)
            out = np.empty(hi - lo, dtype=np.float32)
            start = lo % self.capacity
            first = min(self.capacity - start, hi - lo)
            out[:first] = self._buf[start : start + first]
            out[first:] = self._buf[: hi - lo - first]
            return Cut(out, seg_t + (lo - seg_index) / self.rate)
