"""The live spectrogram topic: each stream's mel frames, compact, for dashboards.

The frames are those the tagger reads (computed once, on the stream threads); this tap
only pools them to :data:`MEL_BINS` bands (at the frontend's 100 frames per second), maps
them to bytes, and publishes a ``mel.<stream>`` message every :data:`MEL_INTERVAL_S` from
the publisher's thread. It costs nothing while nobody asks for it (``publish.mel: auto``
switches it on only while a subscriber has subscribed to ``mel...`` topics).
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

from soundwatch.dsp.windows import FRAMES_PER_SECOND
from soundwatch.sinks.messages import Mel

MEL_BINS = 64  # pairs of the model's 128 mel bands averaged
MEL_LO, MEL_HI = -1.5, 3.0  # log-mel range mapped to bytes 0..255 (silence is about -1.4)
MEL_INTERVAL_S = 0.2  # how often a stream's new frames go out
MEL_BUFFER_S = 5.0  # frames kept per stream between publishes; older ones are dropped


class MelTap:
    """Collects pooled frames per stream (any thread) and turns them into messages (one
    thread). ``active`` is set by the owner; while False, frames are ignored."""

    def __init__(self) -> None:
        self.active = False
        self.dropped_frames: dict[str, int] = {}  # per stream: lost as the publisher lagged
        self._lock = threading.Lock()
        self._pending: dict[str, deque[tuple[float, np.ndarray]]] = {}
        self._limit = int(MEL_BUFFER_S * FRAMES_PER_SECOND)

    def on_frames(self, stream: str, frames: np.ndarray, t_first: float) -> None:
        """Stream thread: ``frames`` ``[128, k]`` starting at Unix time ``t_first``."""
        if not self.active:
            return
        bands = frames.reshape(MEL_BINS, -1, frames.shape[1]).mean(axis=1).T  # [k, 64], a copy
        with self._lock:
            pending = self._pending.setdefault(stream, deque())
            pending.append((t_first, bands))
            while sum(len(b) for _, b in pending) > self._limit:
                lost = len(pending.popleft()[1])
                self.dropped_frames[stream] = self.dropped_frames.get(stream, 0) + lost

    def messages(self) -> list[Mel]:
        """Publisher thread: the new frames of each stream, one message per contiguous run."""
        with self._lock:
            taken = {stream: list(q) for stream, q in self._pending.items() if q}
            for stream in taken:
                self._pending[stream].clear()
        out = []
        for stream, chunks in taken.items():
            run = [chunks[0]]
            for chunk in chunks[1:]:
                t_prev, frames_prev = run[-1]
                if abs(t_prev + len(frames_prev) / FRAMES_PER_SECOND - chunk[0]) > 0.005:
                    out.append(_message(stream, run))  # the stream restarted in between
                    run = []
                run.append(chunk)
            out.append(_message(stream, run))
        return out


def mel_bytes(frames: np.ndarray) -> np.ndarray:
    """Log-mel values as the wire's bytes: ``MEL_LO``..``MEL_HI`` mapped to 0..255."""
    scaled = (frames - MEL_LO) * (255.0 / (MEL_HI - MEL_LO))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _message(stream: str, run: list[tuple[float, np.ndarray]]) -> Mel:
    frames = np.concatenate([bands for _, bands in run])
    t0 = run[0][0]
    return Mel(
        stream=stream,
        t_start=t0,
        t_end=t0 + len(frames) / FRAMES_PER_SECOND,
        frames=mel_bytes(frames),
        bins=MEL_BINS,
        frame_rate=float(FRAMES_PER_SECOND),
        lo=MEL_LO,
        hi=MEL_HI,
    )
