"""``StreamingLogMelBatch``: many aligned streams advanced by one numba call.

Only the frontend benchmark (``benchmarks/frontend.py``) uses it, to measure what batching
the per-stream Python overhead away would gain; the pipeline runs one ``StreamingLogMel``
per stream. Its kernels are compiled on first use (not cached: numba's cache would not
notice edits of the kernels they call).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from soundwatch.dsp.inputs import as_float32_samples
from soundwatch.dsp.kernels import (
    C_NONFINITE,
    N_COUNTERS,
    STATE_SIZE,
    WORK_SIZE,
    flush_frames,
    frames_ready,
    push_samples,
)
from soundwatch.dsp.streaming import _ended_error
from soundwatch.dsp.tables import N_MELS, frames_for_samples
from soundwatch.errors import SoundwatchError


@nb.njit(nogil=True, fastmath={"contract"}, error_model="numpy")
def push_samples_batch(
    chunks: np.ndarray, states: np.ndarray, counters: np.ndarray, work: np.ndarray, out: np.ndarray
) -> None:
    """``push_samples`` for ``S`` aligned streams: ``chunks [S, L]`` -> ``out [S, N_MELS, k]``."""
    for s in range(chunks.shape[0]):
        push_samples(chunks[s], states[s], counters[s], work, out[s], 0)


@nb.njit(nogil=True, fastmath={"contract"}, error_model="numpy")
def flush_frames_batch(
    states: np.ndarray, counters: np.ndarray, work: np.ndarray, out: np.ndarray
) -> None:
    """``flush_frames`` for ``S`` aligned streams."""
    for s in range(states.shape[0]):
        flush_frames(states[s], counters[s], work, out[s], 0)


class StreamingLogMelBatch:
    """``StreamingLogMel`` for ``n_streams`` aligned streams advanced by one numba call.

    ``push(chunks)`` takes float ``[n_streams, samples]`` (same length for every stream, e.g.
    the channels of one capture device, or many sources polled in lockstep) and returns
    float32 ``[n_streams, 128, k]``; ``flush()`` likewise. Each row is exactly what a
    separate ``StreamingLogMel`` would return. One call saves the Python overhead of
    ``n_streams`` separate pushes (1.75x faster for 64 streams, see ``docs/performance.md``).
    """

    def __init__(self, n_streams: int) -> None:
        if n_streams < 1:
            raise SoundwatchError(f"n_streams must be at least 1, got {n_streams}")
        self.n_streams = n_streams
        self._states = np.zeros((n_streams, STATE_SIZE), dtype=np.float32)
        self._counters = np.zeros((n_streams, N_COUNTERS), dtype=np.int64)
        self._work = np.zeros(WORK_SIZE, dtype=np.float64)  # shared: streams run in turn
        self._samples = 0
        self._frames = 0
        self._ended = False

    def reset(self) -> None:
        """Forget every stream (counters too) and start new ones."""
        self._states.fill(0.0)
        self._counters.fill(0)
        self._samples = 0
        self._frames = 0
        self._ended = False

    def push(self, chunks: np.ndarray) -> np.ndarray:
        """Add ``[n_streams, samples]``; return the completed frames ``[n_streams, 128, k]``."""
        if self._ended:
            raise _ended_error()
        samples = as_float32_samples(chunks, what="chunks", ndim=2)
        if samples.shape[0] != self.n_streams:
            raise SoundwatchError(
                f"chunks has {samples.shape[0]} rows but this batch has {self.n_streams} "
                "streams; pass one row per stream"
            )
        n_after = self._samples + samples.shape[1]
        k = frames_ready(n_after) - self._frames
        out = np.empty((self.n_streams, N_MELS, k), dtype=np.float32)
        push_samples_batch(samples, self._states, self._counters, self._work, out)
        self._samples = n_after
        self._frames += k
        return out

    def flush(self) -> np.ndarray:
        """End every stream; return their last frames ``[n_streams, 128, k]`` (as
        ``StreamingLogMel.flush``)."""
        if self._ended:
            raise SoundwatchError("flush() was already called; call reset() to start again")
        self._ended = True
        if self._samples < 2:
            return np.empty((self.n_streams, N_MELS, 0), dtype=np.float32)
        k = frames_for_samples(self._samples) - self._frames
        out = np.empty((self.n_streams, N_MELS, k), dtype=np.float32)
        flush_frames_batch(self._states, self._counters, self._work, out)
        self._frames += k
        return out

    @property
    def frames_emitted(self) -> int:
        """Frames returned so far per stream (the same for all streams)."""
        return self._frames

    @property
    def samples_pushed(self) -> int:
        """Input samples received so far per stream."""
        return self._samples

    @property
    def nonfinite_samples(self) -> np.ndarray:
        """NaN/Inf samples replaced by 0, per stream (int64 ``[n_streams]``, a copy)."""
        return self._counters[:, C_NONFINITE].copy()

    @property
    def ended(self) -> bool:
        """True after ``flush()`` until ``reset()``."""
        return self._ended
