"""Streaming log-mel: frames come out as soon as the samples under their window arrived.

Each frame is computed exactly once, from a bounded ring of the last ``RING_SIZE``
pre-emphasised samples, so the cost of a push grows with the frames it completes, never
with the stream's history. Concatenating everything ``push`` and ``flush`` return gives
exactly ``logmel`` of the whole input (same kernel, same arithmetic).
"""

from __future__ import annotations

import numpy as np

from soundwatch.dsp.inputs import as_float32_samples
from soundwatch.dsp.kernels import (
    C_NONFINITE,
    N_COUNTERS,
    READY_LAG,
    STATE_SIZE,
    WORK_SIZE,
    flush_frames,
    frames_ready,
    push_samples,
)
from soundwatch.dsp.tables import N_MELS, frames_for_samples
from soundwatch.errors import SoundwatchError

LOOKAHEAD_SAMPLES = READY_LAG + 1
"""Frame ``i`` (centred at input sample ``i * HOP``) is returned by the push that delivers
input sample ``i * HOP + LOOKAHEAD_SAMPLES - 1`` (one past the last sample under its window,
which frame 0's start reflection needs; applied to all frames alike): 12.5 ms at 32 kHz."""


def _ended_error() -> SoundwatchError:
    return SoundwatchError(
        "this stream was ended by flush(); call reset() to start a new stream before push()"
    )


class StreamingLogMel:
    """Log-mel frames of one 32 kHz mono stream, pushed in chunks of any size.

    ``push(chunk)`` returns float32 ``[128, k]``: the ``k >= 0`` frames this chunk completes.
    ``flush()`` returns the remaining frames (those whose window reaches past the end and
    need the end reflection) and ends the stream; ``reset()`` starts a new one (and zeroes
    all counters). Frame ``i`` of a stream is centred at input sample ``i * HOP``; the frames
    a call returns are ``frames_emitted - k .. frames_emitted - 1``.

    Input: any float numpy array, 1-D (float16/float64 converted to float32,
    non-contiguous copied); other dtypes or shapes raise ``SoundwatchError``. NaN/Inf
    samples are replaced by 0 and counted in ``nonfinite_samples`` (check it: a non-zero
    count means the device or decoder produced garbage). Call ``soundwatch.dsp.warmup()``
    once before real audio arrives so the first push does not pay the numba compile.

    State is three preallocated arrays (about 28 kB, of which 24 kB scratch); nothing grows
    with the stream.
    """

    def __init__(self) -> None:
        self._state = np.zeros(STATE_SIZE, dtype=np.float32)
        self._counters = np.zeros(N_COUNTERS, dtype=np.int64)
        self._work = np.zeros(WORK_SIZE, dtype=np.float64)
        self._samples = 0  # mirrors of the kernel's counters, cheap to read from Python
        self._frames = 0
        self._ended = False

    def reset(self) -> None:
        """Forget the current stream (its counters too) and start a new one."""
        self._state.fill(0.0)
        self._counters.fill(0)
        self._samples = 0
        self._frames = 0
        self._ended = False

    def push(self, chunk: np.ndarray) -> np.ndarray:
        """Add samples; return the frames they complete, float32 ``[128, k]`` (``k`` may be 0)."""
        if self._ended:
            raise _ended_error()
        samples = as_float32_samples(chunk, what="chunk", ndim=1)
        n_after = self._samples + samples.shape[0]
        k = frames_ready(n_after) - self._frames
        out = np.empty((N_MELS, k), dtype=np.float32)
        written = push_samples(samples, self._state, self._counters, self._work, out, 0)
        if written != k:  # an internal invariant, not user input
            raise AssertionError(f"push wrote {written} frames, expected {k}")
        self._samples = n_after
        self._frames += k
        return out

    def flush(self) -> np.ndarray:
        """End the stream; return its last frames, float32 ``[128, k]``.

        A stream of fewer than 2 samples has no pre-emphasised sample and flushes to
        ``[128, 0]`` (``logmel`` raises for such input instead). Further pushes raise
        ``SoundwatchError`` until ``reset()``.
        """
        if self._ended:
            raise SoundwatchError("flush() was already called; call reset() to start again")
        self._ended = True
        if self._samples < 2:
            return np.empty((N_MELS, 0), dtype=np.float32)
        k = frames_for_samples(self._samples) - self._frames
        out = np.empty((N_MELS, k), dtype=np.float32)
        written = flush_frames(self._state, self._counters, self._work, out, 0)
        if written != k:
            raise AssertionError(f"flush wrote {written} frames, expected {k}")
        self._frames += k
        return out

    @property
    def frames_emitted(self) -> int:
        """Frames returned so far in this stream (the next frame's index)."""
        return self._frames

    @property
    def samples_pushed(self) -> int:
        """Input samples received so far in this stream (non-finite ones included)."""
        return self._samples

    @property
    def nonfinite_samples(self) -> int:
        """NaN/Inf samples received in this stream, each replaced by 0 before processing
        (plus any sample so large, beyond ~1e38, that its pre-emphasis overflowed)."""
        return int(self._counters[C_NONFINITE])

    @property
    def ended(self) -> bool:
        """True after ``flush()`` until ``reset()``."""
        return self._ended
