"""Offline log-mel of a whole waveform, and the explicit numba warm-up.

``logmel`` is the EfficientAT frontend (recipe in ``../shared/models/README.md``): float32
pre-emphasis ``x[n] - 0.97 x[n-1]`` (one sample shorter), STFT with n_fft 1024, a centred
symmetric 800-sample Hann window, hop 320 and ``center=True`` reflect padding, power
spectrum, Kaldi mel filterbank (128 bins, 0-15 kHz), ``(log(mel + 1e-5) + 4.5) / 5``.
It runs the same kernel as ``StreamingLogMel``, so both give identical numbers.
"""

from __future__ import annotations

import time

import numpy as np

from soundwatch.dsp.inputs import as_float32_samples
from soundwatch.dsp.kernels import (
    C_NONFINITE,
    N_COUNTERS,
    STATE_SIZE,
    WORK_SIZE,
    flush_frames,
    push_samples,
    refresh_stale_cache,
)
from soundwatch.dsp.streaming import StreamingLogMel
from soundwatch.dsp.tables import HOP, N_MELS, RING_SIZE, frames_for_samples
from soundwatch.errors import SoundwatchError


def logmel(wave: np.ndarray) -> np.ndarray:
    """Normalised log-mel of a mono 32 kHz waveform: float32 ``[128, 1 + (n - 1) // 320]``.

    Frame ``i`` is centred at sample ``i * 320``. Matches the golden outputs of the float32
    EfficientAT reference within 1e-4 (that reference's own float32 FFT rounding is of this
    order on pure tones) and a float64 evaluation of its recipe within 1e-5, wherever the
    reference is defined (``n >= 514``). Shorter inputs (``2 <= n < 514``),
    where the reference's reflect padding fails, are padded by repeating the reflection, as
    ``numpy.pad(mode="reflect")`` does; ``n < 2`` raises ``SoundwatchError`` (pre-emphasis
    leaves nothing to transform).

    ``wave`` must be a 1-D float numpy array (float16/float64 are converted to float32,
    non-contiguous arrays copied); anything else raises ``SoundwatchError``, as do NaN/Inf
    samples (clean them, e.g. ``np.nan_to_num(wave)``, or use ``StreamingLogMel``, which
    zeroes and counts them).
    """
    samples = as_float32_samples(wave, what="wave", ndim=1)
    n = samples.shape[0]
    if n < 2:
        raise SoundwatchError(
            f"wave has {n} sample(s); the log-mel needs at least 2 (pre-emphasis drops one)"
        )
    state = np.zeros(STATE_SIZE, dtype=np.float32)
    counters = np.zeros(N_COUNTERS, dtype=np.int64)
    work = np.zeros(WORK_SIZE, dtype=np.float64)
    out = np.empty((N_MELS, frames_for_samples(n)), dtype=np.float32)
    written = push_samples(samples, state, counters, work, out, 0)
    written += flush_frames(state, counters, work, out, written)
    if written != out.shape[1]:  # an internal invariant, not user input
        raise AssertionError(f"log-mel wrote {written} of {out.shape[1]} frames")
    bad = int(counters[C_NONFINITE])
    if bad:
        raise SoundwatchError(
            f"wave has {bad} non-finite (NaN/Inf, or beyond float32 range after "
            "pre-emphasis) sample(s); clean it first, e.g. "
            "np.nan_to_num(wave, nan=0.0, posinf=0.0, neginf=0.0)"
        )
    return out


def warmup() -> float:
    """Compile (or load from numba's on-disk cache) every frontend kernel; returns seconds.

    Call once at start-up, before audio arrives, so no push pays the JIT compile. It also
    recompiles cached kernels that were built from other tables (numba's cache only watches
    ``kernels.py``).
    """
    start = time.perf_counter()
    refresh_stale_cache()
    wave = np.zeros(RING_SIZE + 4 * HOP, dtype=np.float32)  # start, middle and end frames
    logmel(wave)
    stream = StreamingLogMel()
    stream.push(wave)
    stream.flush()
    return time.perf_counter() - start
